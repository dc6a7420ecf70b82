//! The JSON shapes of PROTOCOL.md, written out literally, decoded and re-encoded.

use proto::command::decode_request;
use proto::event::{PhaseChanged, PlayerView, RoomEvent, RoomSnapshot};
use proto::lobby::{CreateRoom, Created, LobbyRoom, LobbySnapshot};
use proto::{Command, CommandOk, ErrorCode, Rejection, Reply, SnapReply, SnapRequest};
use serde_json::{json, Value};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(v: Value) -> Value {
    let typed: T = serde_json::from_value(v).expect("decodes");
    serde_json::to_value(&typed).expect("encodes")
}

#[test]
fn create_room_with_and_without_durations() {
    let full = json!({"title": "Friday", "total": 7, "mafia": 2, "doctor": 1, "police": 1,
        "private": false, "durations_ms": {"day_intro": 1, "notice": 2, "day_per_player": 3,
        "vote": 4, "vote_result": 5, "night_intro": 6, "night": 7, "ended": 8}});
    assert_eq!(round_trip::<CreateRoom>(full.clone()), full);
    let minimal: CreateRoom =
        serde_json::from_value(json!({"title": "t", "total": 5, "mafia": 1})).unwrap();
    assert_eq!(
        (minimal.doctor, minimal.police, minimal.private),
        (0, 0, false)
    );
    assert_eq!(minimal.durations_ms.night, None);
}

#[test]
fn every_command_type_of_the_protocol() {
    for v in [
        json!({"type": "join", "name": "Ann"}),
        json!({"type": "leave", "player": "p1234"}),
        json!({"type": "start", "player": "p1234"}),
        json!({"type": "vote", "player": "p1234", "target": "q5678"}),
        json!({"type": "vote", "player": "p1234", "target": null}),
        json!({"type": "skill", "player": "p1234", "target": "q5678"}),
        json!({"type": "chat", "player": "p1234", "text": "hi"}),
    ] {
        assert_eq!(round_trip::<Command>(v.clone()), v);
        let decoded: Command = decode_request(v.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.kind(), v["type"]);
    }
}

#[test]
fn replies_are_ok_true_with_fields_or_ok_false_with_error() {
    let created = Reply::Ok(Created {
        code: proto::RoomCode::parse("Ab12Cd34").unwrap(),
        player_id: None,
        token: None,
    });
    assert_eq!(
        serde_json::to_value(&created).unwrap(),
        json!({"ok": true, "code": "Ab12Cd34"}),
        "a create without a name answers exactly as the contract shows"
    );
    let seated =
        json!({"ok": true, "code": "7QK3M9XRT2VA", "player_id": "p1234", "token": "a.b.c"});
    assert_eq!(round_trip::<Reply<Created>>(seated.clone()), seated);
    let joined = json!({"ok": true, "player_id": "p1234", "token": "a.b.c"});
    assert_eq!(round_trip::<Reply<CommandOk>>(joined.clone()), joined);
    let police = json!({"ok": true, "mafia": true});
    assert_eq!(round_trip::<Reply<CommandOk>>(police.clone()), police);
    assert_eq!(
        round_trip::<Reply<CommandOk>>(json!({"ok": true})),
        json!({"ok": true})
    );
    let err = Reply::<CommandOk>::Err(Rejection::new(ErrorCode::WrongPhase, "not now"));
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"ok": false, "error": "wrong_phase", "message": "not now"})
    );
    assert_eq!(ErrorCode::NameTaken.as_str(), "name_taken");
}

#[test]
fn snap_request_and_reply() {
    for v in [
        json!({"viewer": "p1234", "since": 17}),
        json!({"viewer": null, "since": null}),
    ] {
        assert_eq!(round_trip::<SnapRequest>(v.clone()), v);
    }
    let empty: SnapRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, SnapRequest::default());
    let reply = json!({"events": [{"id": 4, "event": "phase",
        "data": {"phase": "day", "round": 1, "ends_at": 1700000000000u64}}]});
    assert_eq!(round_trip::<SnapReply>(reply.clone()), reply);
}

#[test]
fn phase_event_and_room_snapshot_have_the_protocol_fields() {
    let phase = json!({"phase": "vote_result", "round": 2, "ends_at": 1700000000000u64});
    assert_eq!(round_trip::<PhaseChanged>(phase.clone()), phase);
    assert_eq!(PhaseChanged::NAME, "phase");

    let snapshot = RoomSnapshot {
        code: proto::RoomCode::parse("Ab12Cd34").unwrap(),
        title: "t".into(),
        total: 5,
        mafia: 1,
        doctor: 1,
        police: 1,
        private: false,
        phase: proto::event::Phase::Waiting,
        round: 0,
        ends_at: None,
        host: None,
        players: vec![PlayerView {
            player_id: proto::PlayerId::parse("p1234").unwrap(),
            name: "Ann".into(),
            alive: true,
            role: None,
        }],
        you: None,
        votes: Default::default(),
        deaths: vec![],
        chat: vec![],
        mafia_pick: None,
        protect: None,
        investigations: vec![],
        winner: None,
    };
    let v = serde_json::to_value(&snapshot).unwrap();
    for key in ["code", "phase", "round", "ends_at", "players"] {
        assert!(v.get(key).is_some(), "snapshot lacks {key}: {v}");
    }
    assert_eq!(
        v["players"][0],
        json!({"player_id": "p1234", "name": "Ann", "alive": true}),
        "an unknown role is absent, not null"
    );
    assert_eq!(round_trip::<RoomSnapshot>(v.clone()), v);
}

#[test]
fn lobby_snapshot_lists_rooms() {
    let v = json!({"rooms": [{"code": "Ab12Cd34", "title": "t", "total": 5, "players": 2,
        "phase": "waiting"}]});
    assert_eq!(round_trip::<LobbySnapshot>(v.clone()), v);
    let room: LobbyRoom = serde_json::from_value(v["rooms"][0].clone()).unwrap();
    assert_eq!(room.players, 2);
}

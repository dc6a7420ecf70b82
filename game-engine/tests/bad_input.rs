//! Every kind of bad input gets an error reply with a stable code and changes nothing.

mod common;

use common::{fast_room, Harness};
use serde_json::{json, Value};

#[tokio::test]
async fn bad_commands_are_refused_and_change_nothing() {
    let h = Harness::start().await;
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    let ann = h.join(&code, "Ann").await;
    let before = h.snap(&code, Some(&ann), None).await;

    let raw = |body: &'static [u8]| h.request(h.subjects.room_cmd(&code), body.to_vec());
    let cases: Vec<(Value, &str)> = vec![
        (raw(b"{not json").await, "malformed"),
        (raw(b"\xff\xfe").await, "malformed"),
        (raw(b"[\"join\"]").await, "malformed"),
        (raw(b"42").await, "malformed"),
        (raw(br#"{"type":"dance"}"#).await, "unknown_command"),
        (raw(br#"{"name":"x"}"#).await, "unknown_command"),
        (raw(br#"{"type":"join"}"#).await, "invalid_field"),
        (
            raw(br#"{"type":"vote","target":null}"#).await,
            "invalid_field",
        ),
        (
            raw(br#"{"type":"chat","player":"a.b>c","text":"x"}"#).await,
            "invalid_field",
        ),
        (
            raw(br#"{"type":"chat","player":12,"text":"x"}"#).await,
            "invalid_field",
        ),
        (
            h.cmd(
                &code,
                json!({"type": "chat", "player": "ghost123", "text": "x"}),
            )
            .await,
            "no_such_player",
        ),
        (
            h.cmd(&code, json!({"type": "chat", "player": ann, "text": ""}))
                .await,
            "invalid_text",
        ),
        (
            h.cmd(
                &code,
                json!({"type": "chat", "player": ann, "text": "x".repeat(501)}),
            )
            .await,
            "invalid_text",
        ),
        (
            h.cmd(&code, json!({"type": "join", "name": "\u{7}bell"}))
                .await,
            "invalid_name",
        ),
    ];
    let huge = json!({"type": "join", "name": "x".repeat(70 * 1024)});
    let huge = h.cmd(&code, huge).await;
    for (reply, code) in cases.iter().chain([(huge, "too_large")].iter()) {
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"], *code, "{reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
    }
    let after = h.snap(&code, Some(&ann), None).await;
    assert_eq!(before, after, "bad input changed the room");
    let snap_reply = h
        .request(h.subjects.room_snap(&code), b"nope".to_vec())
        .await;
    assert_eq!(snap_reply["error"], "malformed");
}

#[tokio::test]
async fn impossible_rooms_are_refused() {
    let h = Harness::start().await;
    let base = json!({"title": "t", "total": 5, "mafia": 1});
    let with = |patch: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        v
    };
    for (settings, why) in [
        (with(json!({"total": 2})), "too few players"),
        (with(json!({"total": 21})), "too many players"),
        (with(json!({"mafia": 0})), "no mafia"),
        (
            with(json!({"total": 4, "mafia": 2})),
            "mafia not a minority",
        ),
        (
            with(json!({"doctor": 3, "police": 2})),
            "more roles than players",
        ),
        (with(json!({"title": ""})), "empty title"),
        (with(json!({"title": "x".repeat(61)})), "long title"),
        (
            with(json!({"durations_ms": {"night": 100_000_000_000u64}})),
            "absurd duration",
        ),
    ] {
        let reply = h.create(settings).await;
        assert_eq!(reply["error"], "invalid_room", "{why}: {reply}");
    }
    for (settings, code) in [
        (json!({"title": "t"}), "invalid_field"),
        (
            json!({"title": "t", "total": -1, "mafia": 1}),
            "invalid_field",
        ),
        (
            json!({"title": "t", "total": 300, "mafia": 1}),
            "invalid_field",
        ),
        (
            json!({"title": "t", "total": 3, "mafia": 1, "request_id": "has spaces"}),
            "invalid_field",
        ),
    ] {
        assert_eq!(h.create(settings).await["error"], code);
    }
    let reply = h.request(h.subjects.lobby_create(), b"{{{".to_vec()).await;
    assert_eq!(reply["error"], "malformed");
    // The engine still works after all that.
    h.room(base).await;
}

#[tokio::test]
async fn room_codes_are_long_and_unguessable() {
    let h = Harness::start().await;
    let mut codes = std::collections::HashSet::new();
    for _ in 0..50 {
        let code = h.room(json!({"title": "t", "total": 3, "mafia": 1})).await;
        assert!(code.as_str().len() >= 8);
        assert!(code.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        codes.insert(code);
    }
    assert_eq!(codes.len(), 50);
}

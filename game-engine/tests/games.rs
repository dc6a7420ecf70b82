//! Whole games over a real nats-server: both win conditions, every rule of GAME.md, and what
//! each role is shown.

mod common;

use common::{fast_room, Harness, Watcher};
use proto::{PlayerId, RoomCode};
use serde_json::{json, Value};

struct Seat {
    id: PlayerId,
    role: String,
    watch: Watcher,
}

/// Creates a room, seats `names` (the first is host), starts it and reads each role.
async fn seated(h: &Harness, settings: Value, names: &[&str]) -> (RoomCode, Vec<Seat>, Watcher) {
    let code = h.room(settings).await;
    let public = h.watch(&code, None).await;
    let mut seats = Vec::new();
    for name in names {
        let id = h.join(&code, name).await;
        let watch = h.watch(&code, Some(&id)).await;
        seats.push(Seat {
            id,
            role: String::new(),
            watch,
        });
    }
    h.ok(&code, json!({"type": "start", "player": seats[0].id}))
        .await;
    for seat in &mut seats {
        let dealt = seat.watch.until("role", |_| true).await;
        assert_eq!(dealt.subject, h.subjects.player_events(&code, &seat.id));
        seat.role = dealt.data["role"].as_str().unwrap().to_owned();
    }
    (code, seats, public)
}

fn with_role<'a>(seats: &'a [Seat], role: &str) -> Vec<&'a Seat> {
    seats.iter().filter(|s| s.role == role).collect()
}

/// No event or snapshot a viewer received names another player's role, except where the
/// rules allow it (fellow mafia, the dead, the end).
fn assert_roles_hidden(seat: &Seat, mafia: &[PlayerId]) {
    for ev in &seat.watch.seen {
        match ev.name.as_str() {
            "role" => {
                let fellows = ev.data["mafia"].as_array().cloned().unwrap_or_default();
                if seat.role == "mafia" {
                    assert_eq!(fellows.len(), mafia.len() - 1);
                } else {
                    assert!(
                        fellows.is_empty(),
                        "{} learnt the mafia: {}",
                        seat.role,
                        ev.data
                    );
                }
            }
            "game_over" => {}
            "roles" => {
                let died = seat.watch.seen.iter().any(|d| {
                    d.name == "death" && d.data["player_id"] == seat.id.as_str() && d.id < ev.id
                });
                assert!(died, "{} was shown every role while alive", seat.role);
            }
            "mafia_pick" => assert_eq!(seat.role, "mafia", "{:?}", ev),
            "investigation" => assert_eq!(seat.role, "police", "{:?}", ev),
            "protect" => assert_eq!(seat.role, "doctor", "{:?}", ev),
            _ => assert!(
                !ev.data.to_string().contains("\"role\""),
                "{} saw a role in {:?}",
                seat.role,
                ev
            ),
        }
    }
}

#[tokio::test]
async fn citizens_win_by_voting_out_the_mafia() {
    let h = Harness::start().await;
    let (code, mut seats, mut public) = seated(
        &h,
        fast_room(5, 1, 1, 1),
        &["Ann", "Bob", "Cat", "Dan", "Eve"],
    )
    .await;
    let mafia = with_role(&seats, "mafia")[0].id.clone();
    assert_eq!(with_role(&seats, "doctor").len(), 1);
    assert_eq!(with_role(&seats, "police").len(), 1);
    assert_eq!(with_role(&seats, "citizen").len(), 2);

    public.phase("day").await;
    for seat in &seats {
        h.ok(
            &code,
            json!({"type": "vote", "player": seat.id, "target": mafia}),
        )
        .await;
    }
    // Everyone voted, so the day ends at once; the vote kills the mafia; citizens win.
    public.phase("vote").await;
    let death = public.until("death", |_| true).await;
    assert_eq!(death.data["player_id"], json!(mafia));
    assert_eq!(death.data["cause"], "vote");
    public.phase("ended").await;
    let over = public.until("game_over", |_| true).await;
    assert_eq!(over.data["winner"], "citizens");
    assert_eq!(over.data["roles"].as_object().unwrap().len(), 5);
    assert_eq!(over.data["roles"][mafia.as_str()], "mafia");
    public.until("room_closed", |_| true).await;

    let phases: Vec<&str> = public
        .seen
        .iter()
        .filter(|e| e.name == "phase")
        .map(|e| e.data["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["day_intro", "notice", "day", "vote", "vote_result", "ended"]
    );
    let tally = public.seen.iter().rfind(|e| e.name == "vote").unwrap();
    assert_eq!(tally.data["tally"][mafia.as_str()], 5);

    for seat in &mut seats {
        seat.watch.until("room_closed", |_| true).await;
        assert_roles_hidden(seat, std::slice::from_ref(&mafia));
    }
    // The mafia who died was shown every role.
    let dead = seats.iter().find(|s| s.id == mafia).unwrap();
    assert!(dead.watch.names().contains(&"roles"));
}

#[tokio::test]
async fn mafia_wins_when_it_equals_the_living() {
    let h = Harness::start().await;
    let (code, seats, mut public) = seated(&h, fast_room(3, 1, 0, 0), &["Ann", "Bob", "Cat"]).await;
    let mafia = with_role(&seats, "mafia")[0];
    let victim = with_role(&seats, "citizen")[0];

    public.phase("day").await;
    for seat in &seats {
        h.ok(
            &code,
            json!({"type": "vote", "player": seat.id, "target": null}),
        )
        .await;
    }
    public.phase("vote_result").await;
    public.phase("night").await;
    h.ok(
        &code,
        json!({"type": "skill", "player": mafia.id, "target": victim.id}),
    )
    .await;
    let death = public.until("death", |_| true).await;
    assert_eq!(death.data["player_id"], json!(victim.id));
    assert_eq!(death.data["cause"], "mafia");
    let over = public.until("game_over", |_| true).await;
    assert_eq!(over.data["winner"], "mafia");
    let abstained = public.seen.iter().filter(|e| e.name == "death").count();
    assert_eq!(
        abstained,
        1,
        "abstention killed nobody: {:?}",
        public.names()
    );
}

#[tokio::test]
async fn every_rule_is_enforced() {
    let mut h = Harness::start().await;
    let code = h.room(fast_room(5, 1, 1, 1)).await;
    let ann = h.join(&code, "Ann").await;
    let bob = h.join(&code, "Bob").await;

    // Names: unique regardless of case, 1 to 20 characters, no control characters.
    h.refuses(
        &code,
        json!({"type": "join", "name": " ann "}),
        "name_taken",
    )
    .await;
    for bad in ["", "   ", "x\u{1}y", "abcdefghijklmnopqrstu"] {
        h.refuses(&code, json!({"type": "join", "name": bad}), "invalid_name")
            .await;
    }
    // Before the game: no votes, no skills, only the host starts, and only when full.
    h.refuses(
        &code,
        json!({"type": "vote", "player": ann, "target": bob}),
        "wrong_phase",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "skill", "player": ann, "target": bob}),
        "wrong_phase",
    )
    .await;
    h.refuses(&code, json!({"type": "start", "player": bob}), "not_host")
        .await;
    h.refuses(
        &code,
        json!({"type": "start", "player": ann}),
        "not_enough_players",
    )
    .await;
    let mut ids = vec![ann.clone(), bob.clone()];
    for name in ["Cat", "Dan", "Eve"] {
        ids.push(h.join(&code, name).await);
    }
    h.refuses(&code, json!({"type": "join", "name": "Fay"}), "room_full")
        .await;

    let mut watchers = Vec::new();
    for id in &ids {
        watchers.push(h.watch(&code, Some(id)).await);
    }
    let mut public = h.watch(&code, None).await;
    h.ok(&code, json!({"type": "start", "player": ann})).await;
    h.refuses(
        &code,
        json!({"type": "start", "player": ann}),
        "already_started",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "join", "name": "Gus"}),
        "already_started",
    )
    .await;

    let mut roles = Vec::new();
    for w in &mut watchers {
        roles.push(
            w.until("role", |_| true).await.data["role"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let who = |role: &str| ids[roles.iter().position(|r| r == role).unwrap()].clone();
    let (mafia, doctor, police) = (who("mafia"), who("doctor"), who("police"));
    let citizens: Vec<PlayerId> = ids
        .iter()
        .zip(&roles)
        .filter(|(_, r)| *r == "citizen")
        .map(|(id, _)| id.clone())
        .collect();

    // Day 1: a vote for nobody in the room is refused; a tie kills nobody.
    public.phase("day").await;
    let stranger = PlayerId::parse("nobody12").unwrap();
    h.refuses(
        &code,
        json!({"type": "vote", "player": ann, "target": stranger}),
        "invalid_target",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "vote", "player": stranger, "target": ann}),
        "no_such_player",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "skill", "player": mafia, "target": ann}),
        "wrong_phase",
    )
    .await;
    h.ok(
        &code,
        json!({"type": "chat", "player": doctor, "text": "good morning"}),
    )
    .await;
    let (a, b) = (&citizens[0], &citizens[1]);
    let votes = [(&mafia, a), (&doctor, a), (&police, b), (a, b)];
    for (voter, target) in votes {
        h.ok(
            &code,
            json!({"type": "vote", "player": voter, "target": target}),
        )
        .await;
    }
    h.ok(&code, json!({"type": "vote", "player": b, "target": null}))
        .await;
    public.phase("vote").await;
    public.phase("vote_result").await;
    let snap = h.snap(&code, Some(&ann), None).await;
    assert_eq!(
        snap["events"][0]["data"]["votes"]
            .as_object()
            .unwrap()
            .len(),
        5,
        "the result phase still shows the votes everyone saw"
    );

    // Night 1: roles act; the doctor saves the mafia's pick; police investigate once.
    public.phase("night").await;
    h.refuses(
        &code,
        json!({"type": "vote", "player": ann, "target": bob}),
        "wrong_phase",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "skill", "player": a, "target": mafia}),
        "wrong_role",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "skill", "player": mafia, "target": mafia}),
        "invalid_target",
    )
    .await;
    h.refuses(
        &code,
        json!({"type": "chat", "player": a, "text": "psst"}),
        "chat_closed",
    )
    .await;
    h.ok(
        &code,
        json!({"type": "chat", "player": mafia, "text": "let us pick"}),
    )
    .await;
    h.ok(
        &code,
        json!({"type": "skill", "player": mafia, "target": a}),
    )
    .await;
    h.ok(
        &code,
        json!({"type": "skill", "player": doctor, "target": a}),
    )
    .await;
    let found = h
        .ok(
            &code,
            json!({"type": "skill", "player": police, "target": mafia}),
        )
        .await;
    assert_eq!(found["mafia"], true);
    h.refuses(
        &code,
        json!({"type": "skill", "player": police, "target": a}),
        "already_investigated",
    )
    .await;
    public.phase("day_intro").await;
    public.phase("day").await;
    assert!(
        !public.names().contains(&"death"),
        "the tie and the doctor's save killed nobody: {:?}",
        public.names()
    );

    // Day 2: the town votes out a citizen, who then talks only to the dead.
    for voter in &ids {
        h.ok(&code, json!({"type": "vote", "player": voter, "target": a}))
            .await;
    }
    let death = public.until("death", |_| true).await;
    assert_eq!(death.data["player_id"], json!(a));
    h.refuses(
        &code,
        json!({"type": "vote", "player": a, "target": b}),
        "not_alive",
    )
    .await;
    public.phase("night").await;
    h.refuses(
        &code,
        json!({"type": "skill", "player": police, "target": police}),
        "invalid_target",
    )
    .await;
    h.ok(
        &code,
        json!({"type": "chat", "player": a, "text": "boo from beyond"}),
    )
    .await;
    h.ok(
        &code,
        json!({"type": "chat", "player": mafia, "text": "second night"}),
    )
    .await;

    // Each viewer got exactly the chat lines the rules let them hear.
    for (i, w) in watchers.iter_mut().enumerate() {
        w.until("chat", |d| d["text"] == "good morning").await;
        if ids[i] == mafia || &ids[i] == a {
            let expected = if ids[i] == mafia {
                "second night"
            } else {
                "boo from beyond"
            };
            w.until("chat", |d| d["text"] == expected).await;
        }
    }
    // A sync point: events are published in id order, so once the mafia has this line every
    // earlier event has been published to everyone it was for.
    h.ok(
        &code,
        json!({"type": "chat", "player": mafia, "text": "sync"}),
    )
    .await;
    for (i, w) in watchers.iter_mut().enumerate() {
        if ids[i] == mafia {
            w.until("chat", |d| d["text"] == "sync").await;
        }
        let heard: Vec<String> = w
            .seen
            .iter()
            .filter(|e| e.name == "chat")
            .map(|e| {
                format!(
                    "{}:{}",
                    e.data["channel"].as_str().unwrap(),
                    e.data["text"].as_str().unwrap()
                )
            })
            .collect();
        let mut expected = vec!["public:good morning".to_owned()];
        if ids[i] == mafia {
            expected.extend(
                ["mafia:let us pick", "mafia:second night", "mafia:sync"].map(String::from),
            );
        }
        if &ids[i] == a {
            expected.push("dead:boo from beyond".into());
        }
        let heard: Vec<&String> = heard.iter().filter(|l| expected.contains(l)).collect();
        assert_eq!(
            heard.len(),
            expected.len(),
            "viewer {i} ({}) heard {heard:?}",
            roles[i]
        );
        assert!(
            w.seen.iter().filter(|e| e.name == "chat").count() == expected.len(),
            "viewer {i} ({}) heard more than allowed: {:?}",
            roles[i],
            w.seen
        );
    }
    // The police's snapshot has the result; nobody else's does.
    let snap = h.snap(&code, Some(&police), None).await;
    assert_eq!(
        snap["events"][0]["data"]["investigations"][0]["mafia"],
        true
    );
    let snap = h.snap(&code, Some(&doctor), None).await;
    assert!(snap["events"][0]["data"].get("investigations").is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn snapshots_show_each_viewer_only_what_events_showed_them() {
    let h = Harness::start().await;
    let (code, seats, mut public) = seated(
        &h,
        fast_room(7, 2, 1, 1),
        &["A1", "B2", "C3", "D4", "E5", "F6", "G7"],
    )
    .await;
    public.phase("day").await;
    let mafia: Vec<&PlayerId> = with_role(&seats, "mafia").iter().map(|s| &s.id).collect();
    for seat in &seats {
        let snap = h.snap(&code, Some(&seat.id), None).await;
        assert_eq!(snap["ok"], true);
        let data = &snap["events"][0]["data"];
        assert_eq!(snap["events"][0]["event"], "snapshot");
        assert_eq!(data["you"], json!(seat.id));
        for p in data["players"].as_array().unwrap() {
            let id = p["player_id"].as_str().unwrap();
            let visible = id == seat.id.as_str()
                || (seat.role == "mafia" && mafia.iter().any(|m| m.as_str() == id));
            assert_eq!(p.get("role").is_some(), visible, "{} sees {p}", seat.role);
            if id == seat.id.as_str() {
                assert_eq!(p["role"], seat.role.as_str());
            }
        }
    }
    // A viewer who is not in the room is refused; no viewer gets the public view.
    let stranger = PlayerId::parse("nobody12").unwrap();
    assert_eq!(
        h.snap(&code, Some(&stranger), None).await["error"],
        "no_such_player"
    );
    let public_view = h.snap(&code, None, None).await;
    assert!(!public_view.to_string().contains("\"role\""));
}

#[tokio::test]
async fn several_doctors_and_officers_each_see_only_their_own_night() {
    let h = Harness::start().await;
    let (code, seats, mut public) = seated(
        &h,
        fast_room(7, 1, 2, 2),
        &["A1", "B2", "C3", "D4", "E5", "F6", "G7"],
    )
    .await;
    let doctors = with_role(&seats, "doctor");
    let police = with_role(&seats, "police");
    let mafia = with_role(&seats, "mafia")[0];
    let citizens = with_role(&seats, "citizen");
    public.phase("day").await;
    for seat in &seats {
        h.ok(
            &code,
            json!({"type": "vote", "player": seat.id, "target": null}),
        )
        .await;
    }
    public.phase("night").await;
    h.ok(
        &code,
        json!({"type": "skill", "player": doctors[0].id, "target": citizens[0].id}),
    )
    .await;
    h.ok(
        &code,
        json!({"type": "skill", "player": doctors[1].id, "target": citizens[1].id}),
    )
    .await;
    // Each officer has their own investigation tonight.
    let first = h
        .ok(
            &code,
            json!({"type": "skill", "player": police[0].id, "target": mafia.id}),
        )
        .await;
    let second = h
        .ok(
            &code,
            json!({"type": "skill", "player": police[1].id, "target": citizens[0].id}),
        )
        .await;
    assert_eq!(
        (first["mafia"].as_bool(), second["mafia"].as_bool()),
        (Some(true), Some(false))
    );
    for (doctor, protected) in [(doctors[0], &citizens[0].id), (doctors[1], &citizens[1].id)] {
        let data = h.snap(&code, Some(&doctor.id), None).await["events"][0]["data"].clone();
        assert_eq!(
            data["protect"],
            json!(protected),
            "a doctor sees only their own pick"
        );
    }
    for (officer, target) in [(police[0], &mafia.id), (police[1], &citizens[0].id)] {
        let data = h.snap(&code, Some(&officer.id), None).await["events"][0]["data"].clone();
        let results = data["investigations"].as_array().unwrap();
        assert_eq!(
            results.len(),
            1,
            "an officer sees only their own results: {results:?}"
        );
        assert_eq!(results[0]["target"], json!(target));
    }
    // The mafia picks a protected player: one doctor's save is enough.
    h.ok(
        &code,
        json!({"type": "skill", "player": mafia.id, "target": citizens[1].id}),
    )
    .await;
    public.phase("day_intro").await;
    assert!(!public.names().contains(&"death"), "{:?}", public.names());
}

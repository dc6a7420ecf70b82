//! Phase deadlines as the rules set them: each phase is timed from the time the room hands
//! them (the previous deadline, when it fired on time), so lateness never accumulates, and
//! idle rooms close. (The thread that fires deadlines is tested in `src/scheduler.rs`, the
//! policy for a late deadline in `src/room.rs`.)

use std::time::Duration;

use game_engine::rules::{Ack, Effects, Game, Now, IDLE_ROUNDS};
use proto::event::Phase;
use proto::lobby::CreateRoom;
use proto::{Command, PlayerId, RoomCode};

const START: Now = Now { unix_ms: 1_000_000 };

/// A room of three with these settings, everyone seated; started when `start` is true.
fn seated(settings: serde_json::Value, start: bool) -> (Game, Effects) {
    let settings: CreateRoom = serde_json::from_value(settings).unwrap();
    let code = RoomCode::parse("Ab12Cd34").unwrap();
    let mut game = Game::new(code, settings, Duration::ZERO, START).unwrap();
    let mut fx = Effects::default();
    let mut host: Option<PlayerId> = None;
    for name in ["a", "b", "c"] {
        let join = Command::Join { name: name.into() };
        if let Ok(Ack::Joined(id)) = game.handle(join, START, &mut rand::rng(), &mut fx) {
            host.get_or_insert(id);
        }
    }
    if start {
        let start = Command::Start {
            player: host.unwrap(),
        };
        game.handle(start, START, &mut rand::rng(), &mut fx)
            .unwrap();
    }
    (game, fx)
}

#[test]
fn each_phase_is_timed_from_the_deadline_before_it() {
    let (mut game, mut fx) = seated(
        serde_json::json!({"title": "t", "total": 3, "mafia": 1,
            "durations_ms": {"day_intro": 1000, "notice": 2000, "day_per_player": 300,
                "vote": 4000, "vote_result": 500, "night_intro": 600, "night": 7000}}),
        true,
    );
    assert_eq!(
        game.deadline_ms(),
        START.unix_ms + 1000,
        "day_intro lasts 1 s"
    );
    // (phase entered, ms after the start): day is 300 ms per living player.
    let expected = [
        (Phase::Notice, 1000),
        (Phase::Day, 3000),
        (Phase::Vote, 3900),
        (Phase::VoteResult, 7900),
        (Phase::NightIntro, 8400),
        (Phase::Night, 9000),
        (Phase::DayIntro, 16000),
    ];
    for (phase, at_ms) in expected {
        let deadline = game.deadline_ms();
        assert_eq!(
            deadline - START.unix_ms,
            at_ms,
            "{phase:?} is due on schedule"
        );
        game.on_deadline(Now { unix_ms: deadline }, &mut fx);
        assert_eq!(game.phase(), phase);
        let ends_at = fx.events.last().unwrap().data.clone();
        assert!(
            ends_at.contains(&format!("\"ends_at\":{}", game.deadline_ms())),
            "the phase event carries its deadline: {ends_at}"
        );
    }
}

#[test]
fn an_empty_room_has_five_minutes_and_a_waiting_one_twelve_hours() {
    let settings: CreateRoom =
        serde_json::from_value(serde_json::json!({"title": "t", "total": 3, "mafia": 1})).unwrap();
    let mut game = Game::new(
        RoomCode::parse("Ab12Cd34").unwrap(),
        settings,
        Duration::ZERO,
        START,
    )
    .unwrap();
    assert_eq!(game.deadline_ms() - START.unix_ms, 300_000);
    let mut fx = Effects::default();
    let ack = game.handle(
        Command::Join { name: "a".into() },
        START,
        &mut rand::rng(),
        &mut fx,
    );
    assert!(ack.is_ok());
    assert_eq!(
        game.deadline_ms() - START.unix_ms,
        12 * 3600 * 1000,
        "someone is waiting"
    );
    game.on_deadline(
        Now {
            unix_ms: game.deadline_ms(),
        },
        &mut fx,
    );
    assert!(fx.closed);
    assert_eq!(fx.events.last().unwrap().name, "room_closed");
}

#[test]
fn an_abandoned_game_closes_instead_of_cycling_for_ever() {
    let (mut game, mut fx) = seated(
        serde_json::json!({"title": "t", "total": 3, "mafia": 1}),
        true,
    );
    let mut days = 0;
    while !fx.closed {
        if game.phase() == Phase::DayIntro {
            days += 1;
            assert!(days <= 10, "the game never closed");
        }
        game.on_deadline(
            Now {
                unix_ms: game.deadline_ms(),
            },
            &mut fx,
        );
    }
    assert_eq!(days, 1 + IDLE_ROUNDS, "closed after the idle rounds");
    assert_eq!(fx.events.last().unwrap().name, "room_closed");
}

#[test]
fn a_game_survives_serialisation_mid_play() {
    let (game, _) = seated(
        serde_json::json!({"title": "t", "total": 3, "mafia": 1}),
        true,
    );
    let json = serde_json::to_string(&game).unwrap();
    let back: Game = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert_eq!(back.phase(), Phase::DayIntro);
    assert_eq!(back.deadline_ms(), game.deadline_ms());
    for viewer in game
        .snapshot(None, Vec::new())
        .players
        .iter()
        .map(|p| p.player_id.clone())
    {
        assert_eq!(
            back.snapshot(Some(&viewer), Vec::new()),
            game.snapshot(Some(&viewer), Vec::new()),
            "every viewer sees the same game after a round trip"
        );
    }
}

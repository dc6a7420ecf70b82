//! Phase deadlines as the rules set them, under paused time: each phase is timed from the
//! previous deadline, so lateness never accumulates, and idle rooms close. (The thread that
//! fires deadlines is tested in `src/scheduler.rs`.)

use std::time::Duration;

use game_engine::room::game::{Ack, Effects, Game, Now, IDLE_ROUNDS};
use proto::event::Phase;
use proto::lobby::CreateRoom;
use proto::{Command, PlayerId, RoomCode};
use tokio::time::{sleep_until, Instant};

fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_ms: 1_000_000,
    }
}

/// A room of three with these settings, everyone seated; started when `start` is true.
fn seated(settings: serde_json::Value, start: bool) -> (Game, Effects) {
    let settings: CreateRoom = serde_json::from_value(settings).unwrap();
    let code = RoomCode::parse("Ab12Cd34").unwrap();
    let mut game = Game::new(code, settings, Duration::ZERO, now()).unwrap();
    let mut fx = Effects::default();
    let mut host: Option<PlayerId> = None;
    for name in ["a", "b", "c"] {
        let join = Command::Join { name: name.into() };
        if let Ok(Ack::Joined(id)) = game.handle(join, now(), &mut rand::rng(), &mut fx) {
            host.get_or_insert(id);
        }
    }
    if start {
        let start = Command::Start {
            player: host.unwrap(),
        };
        game.handle(start, now(), &mut rand::rng(), &mut fx)
            .unwrap();
    }
    (game, fx)
}

#[tokio::test(start_paused = true)]
async fn phases_fire_exactly_at_their_deadlines() {
    let start = Instant::now();
    let (mut game, mut fx) = seated(
        serde_json::json!({"title": "t", "total": 3, "mafia": 1,
            "durations_ms": {"day_intro": 1000, "notice": 2000, "day_per_player": 300,
                "vote": 4000, "vote_result": 500, "night_intro": 600, "night": 7000}}),
        true,
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
        let deadline = game.deadline();
        assert!(
            deadline > Instant::now(),
            "the next deadline is ahead, late wake-ups notwithstanding"
        );
        sleep_until(deadline).await;
        // Pretend the wake-up came 3 ms late: the next deadline is still set from this one.
        let late = Now {
            instant: deadline,
            unix_ms: 0,
        };
        tokio::time::advance(Duration::from_millis(3)).await;
        game.on_deadline(late, &mut fx);
        assert_eq!(game.phase(), phase);
        assert_eq!(
            deadline.duration_since(start),
            Duration::from_millis(at_ms),
            "{phase:?} began on schedule despite the late wake-ups"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_room_has_five_minutes_and_a_waiting_one_twelve_hours() {
    let settings: CreateRoom =
        serde_json::from_value(serde_json::json!({"title": "t", "total": 3, "mafia": 1})).unwrap();
    let created = Instant::now();
    let mut game = Game::new(
        RoomCode::parse("Ab12Cd34").unwrap(),
        settings,
        Duration::ZERO,
        now(),
    )
    .unwrap();
    assert_eq!(game.deadline() - created, Duration::from_secs(300));
    let mut fx = Effects::default();
    let ack = game.handle(
        Command::Join { name: "a".into() },
        now(),
        &mut rand::rng(),
        &mut fx,
    );
    assert!(ack.is_ok());
    assert_eq!(
        game.deadline() - created,
        Duration::from_secs(12 * 3600),
        "someone is waiting"
    );
    sleep_until(game.deadline()).await;
    game.on_deadline(now(), &mut fx);
    assert!(fx.closed);
    assert_eq!(fx.events.last().unwrap().name, "room_closed");
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_game_closes_instead_of_cycling_for_ever() {
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
        game.on_deadline(now(), &mut fx);
    }
    assert_eq!(days, 1 + IDLE_ROUNDS, "closed after the idle rounds");
    assert_eq!(fx.events.last().unwrap().name, "room_closed");
}

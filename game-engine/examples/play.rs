//! Plays one whole game of Mafia against a running engine, over NATS only, printing every
//! event as it arrives.
//!
//! ```text
//! nats-server &                     # or deploy/up, which starts everything
//! PHASECAST_AUTH__SIGNING_KEY_FILE=signing.pem cargo run -p game-engine &
//! cargo run -p game-engine --example play -- nats://127.0.0.1:4222
//! ```
//!
//! Five bots join, the host starts, and each bot plays its role: the town votes, the mafia
//! picks, the doctor protects, the police investigate. This is also how your own backend
//! drives the engine: requests on `game.room.<code>.cmd`, events on `game.room.<code>.evt*`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{PlayerId, RoomCode, Subjects};
use rand::seq::IndexedRandom;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let nats = async_nats::connect(&url).await?;
    let subjects = Subjects::default();
    let ask = |subject: String, body: Value| {
        let nats = nats.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                nats.request(subject, body.to_string().into()),
            )
            .await??;
            anyhow::Ok(serde_json::from_slice::<Value>(&reply.payload)?)
        }
    };

    let created = ask(
        subjects.lobby_create(),
        json!({"title": "example game", "total": 5, "mafia": 1, "doctor": 1, "police": 1,
            "durations_ms": {"day_intro": 500, "notice": 500, "day_per_player": 1500,
                "vote": 1000, "vote_result": 500, "night_intro": 500, "night": 1500,
                "ended": 1000}}),
    )
    .await?;
    let code = RoomCode::parse(created["code"].as_str().unwrap_or_default())?;
    println!("created room {code}");
    // One subscription over the whole room shows public and private events in order.
    let mut events = nats.subscribe(subjects.room_wildcard(&code)).await?;
    nats.flush().await?;

    let mut bots: Vec<PlayerId> = Vec::new();
    for name in ["Ada", "Ben", "Cleo", "Dev", "Eli"] {
        let joined = ask(
            subjects.room_cmd(&code),
            json!({"type": "join", "name": name}),
        )
        .await?;
        bots.push(PlayerId::parse(
            joined["player_id"].as_str().unwrap_or_default(),
        )?);
    }
    ask(
        subjects.room_cmd(&code),
        json!({"type": "start", "player": bots[0]}),
    )
    .await?;

    let mut roles: BTreeMap<PlayerId, String> = BTreeMap::new();
    let mut alive: BTreeSet<PlayerId> = bots.iter().cloned().collect();
    while let Some(msg) = events.next().await {
        let Some(headers) = &msg.headers else {
            continue;
        };
        let (Some(id), Some(name)) = (headers.get(SSE_ID), headers.get(SSE_EVENT)) else {
            continue;
        };
        let data: Value = serde_json::from_slice(&msg.payload)?;
        let to = subjects
            .player_of(&msg.subject)
            .map_or("everyone".into(), |p| p.to_owned());
        println!("#{id:<4} {name:<14} to {to:<12} {data}");
        match name.as_str() {
            "role" => {
                if let Some(p) = subjects.player_of(&msg.subject) {
                    roles.insert(
                        PlayerId::parse(p)?,
                        data["role"].as_str().unwrap_or("").into(),
                    );
                }
            }
            "death" => {
                alive.remove(&PlayerId::parse(data["player_id"].as_str().unwrap_or(""))?);
            }
            "phase" => {
                let living: Vec<&PlayerId> = alive.iter().collect();
                let mut rng = rand::rng();
                match data["phase"].as_str() {
                    Some("day") => {
                        for voter in &living {
                            let others: Vec<&&PlayerId> =
                                living.iter().filter(|p| p != &voter).collect();
                            let target = others.choose(&mut rng).map(|p| (**p).clone());
                            ask(
                                subjects.room_cmd(&code),
                                json!({"type": "vote", "player": voter, "target": target}),
                            )
                            .await?;
                        }
                    }
                    Some("night") => {
                        for actor in &living {
                            let role = roles.get(*actor).map(String::as_str);
                            let targets: Vec<&&PlayerId> = living
                                .iter()
                                .filter(|p| {
                                    role != Some("mafia")
                                        || roles.get(**p).map(String::as_str) != Some("mafia")
                                })
                                .filter(|p| role != Some("police") || p != &actor)
                                .collect();
                            if let (Some("mafia" | "doctor" | "police"), Some(target)) =
                                (role, targets.choose(&mut rng))
                            {
                                let reply = ask(
                                    subjects.room_cmd(&code),
                                    json!({"type": "skill", "player": actor, "target": target}),
                                )
                                .await?;
                                println!(
                                    "      {actor} ({}) → {target}: {reply}",
                                    role.unwrap_or("")
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
            "room_closed" => break,
            _ => {}
        }
    }
    Ok(())
}

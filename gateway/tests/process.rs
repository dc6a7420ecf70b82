//! The gateway as a process: SIGTERM ends every stream and exits 0 within the grace period;
//! a bad config exits non-zero naming the key.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{FakeStream, GatewayProcess, Publish, Setup, Sse, WAIT};

#[tokio::test]
async fn sigterm_ends_streams_and_exits_within_the_grace_period() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut gw = GatewayProcess::start(
        &s.nats.url(),
        &s.keys,
        &[("PHASECAST_GATEWAY__SHUTDOWN_GRACE", "3s")],
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut sse = Sse::connect(&gw.url("/v1/lobby/events"), &[]).await;
        sse.next().await.unwrap();
        streams.push(sse);
    }
    fake.send(Publish::Public { n: 1, size: 8 });
    for sse in &mut streams {
        assert_eq!(sse.next().await.unwrap().id, Some(1));
    }
    let asked = Instant::now();
    gw.terminate();
    for sse in &mut streams {
        assert!(sse.next().await.is_none(), "the stream ended");
    }
    let status = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        asked.elapsed() < Duration::from_secs(3) + WAIT / 10,
        "within the grace period"
    );
}

#[tokio::test]
async fn no_token_reaches_the_gateway_s_log_even_at_debug() {
    let s = Setup::new(|_| {}).await;
    let _lobby = FakeStream::start(&s, None, true).await;
    let code = proto::RoomCode::parse("Room1234").unwrap();
    let _room = FakeStream::start(&s, Some(code.clone()), true).await;
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut gw =
        GatewayProcess::start_logging(&s.nats.url(), &s.keys, &[("RUST_LOG", "debug")], log.into())
            .await;
    let player = proto::PlayerId::parse("ann12345").unwrap();
    let token = common::token(&code, &player, 60);
    let forged = "eyJhbGciOiJFZERTQSJ9.forged-token-marker.c2ln";
    let events = gw.url(&format!("/v1/rooms/{code}/events"));
    // The token in the query (as EventSource sends it), on the direct path and through the
    // general HTTP stack (an Origin), as a bearer, as a cookie, and a forged one refused.
    let query = format!("{events}?token={token}");
    let mut direct = Sse::connect(&query, &[]).await;
    assert_eq!(direct.next().await.unwrap().event, "snapshot");
    let mut routed = Sse::connect(&query, &[("Origin", "http://x")]).await;
    assert_eq!(routed.next().await.unwrap().event, "snapshot");
    let bearer = format!("Bearer {token}");
    let mut bearer_stream = Sse::connect(&events, &[("Authorization", &bearer)]).await;
    assert_eq!(bearer_stream.next().await.unwrap().event, "snapshot");
    let cookie = format!("phasecast_token={token}");
    let mut cookie_stream = Sse::connect(&events, &[("Cookie", &cookie)]).await;
    assert_eq!(cookie_stream.next().await.unwrap().event, "snapshot");
    let refused = Sse::connect(&format!("{events}?token={forged}"), &[]).await;
    assert_eq!(refused.status, 401);
    let command = reqwest::Client::new()
        .post(gw.url(&format!("/v1/rooms/{code}/commands?token={forged}")))
        .header("Content-Type", "application/json")
        .body(r#"{"type":"chat","text":"hi"}"#);
    let answer = tokio::time::timeout(WAIT, command.send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 401);

    gw.terminate();
    let status = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        written.contains("gateway ready") && written.contains("DEBUG"),
        "the log was written, at debug: {written:.400}"
    );
    assert!(!written.contains(&token), "a player's token is in the log");
    assert!(
        !written.contains("forged-token-marker"),
        "a refused token is in the log"
    );
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_key() {
    let bin = env!("CARGO_BIN_EXE_gateway");
    let keys = common::Keys::new();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "auth.verify_key_file"),
        (
            &[("PHASECAST_AUTH__VERIFY_KEY_FILE", "/nonexistent.pem")],
            "auth.verify_key_file",
        ),
        (
            &[("PHASECAST_GATEWAY__HEARTBEAT", "often")],
            "gateway.heartbeat",
        ),
    ];
    let base = [
        ("PHASECAST_GATEWAY__LISTEN", "127.0.0.1:0"),
        ("PHASECAST_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    test_support::assert_bad_config_named(bin, &base, &cases);
    let missing = Command::new(bin)
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.toml"));
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    drop(keys);
}

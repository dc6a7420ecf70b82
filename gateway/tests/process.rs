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

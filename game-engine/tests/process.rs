//! The engine as a process: SIGTERM stops it cleanly (exit 0); a bad config exits non-zero
//! before serving, naming the key.

use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_game-engine");

#[test]
fn sigterm_stops_the_engine_cleanly() {
    let nats = NatsServer::start();
    let keys = tempfile::tempdir().unwrap();
    let (signing, _) = test_support::write_test_keys(keys.path());
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let mut child = Command::new(BIN)
        .env("PHASECAST_NATS__URL", nats.url())
        .env("PHASECAST_AUTH__SIGNING_KEY_FILE", &signing)
        .env("PHASECAST_ENGINE__ADMIN_LISTEN", admin_addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        test_support::wait_until_listening(admin_addr),
        "engine did not start"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "auth.signing_key_file"),
        (
            &[("PHASECAST_AUTH__SIGNING_KEY_FILE", "/nonexistent.pem")],
            "auth.signing_key_file",
        ),
        (&[("PHASECAST_ENGINE__HISTORY", "lots")], "engine.history"),
    ];
    let base = [
        ("PHASECAST_ENGINE__ADMIN_LISTEN", "127.0.0.1:0"),
        ("PHASECAST_NATS__URL", "nats://127.0.0.1:1"),
    ];
    test_support::assert_bad_config_named(BIN, &base, &cases);
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
}

//! The shipped nginx config (`deploy/nginx`), run by real nginx in front of two gateway
//! processes: no buffering, streams outlive the read timeout, failover resumes without gaps.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, FakeStream, GatewayProcess, Publish, Setup, Sse};

struct Nginx {
    child: Child,
    port: u16,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Renders deploy/nginx for these upstreams with a short read timeout, and starts it.
    async fn start(upstreams: &[&GatewayProcess], read_timeout: &str) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        let port = free_port();
        let render = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/render");
        let mut args = vec![
            prefix.path().display().to_string(),
            format!("127.0.0.1:{port}"),
            prefix.path().display().to_string(),
            read_timeout.to_owned(),
        ];
        args.extend(upstreams.iter().map(|g| g.addr.to_string()));
        let rendered = Command::new(render).args(&args).output().unwrap();
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let conf = prefix.path().join("nginx.conf");
        std::fs::write(&conf, &rendered.stdout).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx)");
        let nginx = Nginx {
            child,
            port,
            _prefix: prefix,
        };
        let healthz = nginx.url("/healthz");
        common::poll_until("nginx proxies", || common::ready(&healthz)).await;
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: a killed master leaves its workers running on the port.
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        // nginx waits for its workers before it exits.
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sse_through_nginx_is_unbuffered_kept_alive_and_fails_over_without_gaps() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let heartbeat = [("PHASECAST_GATEWAY__HEARTBEAT", "300ms")];
    let a = GatewayProcess::start(&s.nats.url(), &s.keys, &heartbeat).await;
    let b = GatewayProcess::start(&s.nats.url(), &s.keys, &heartbeat).await;
    let nginx = Nginx::start(&[&a, &b], "1s").await;
    let url = nginx.url("/v1/lobby/events");

    let mut sse = Sse::connect(&url, &[]).await;
    assert_eq!(sse.status, 200);
    let mut last = sse.next().await.unwrap().id.unwrap();

    // No buffering: each event arrives well before any buffer would flush.
    for _ in 0..5 {
        let sent = Instant::now();
        fake.send(Publish::Public { n: 1, size: 32 });
        let ev = sse.next().await.unwrap();
        let took = sent.elapsed();
        assert_eq!(ev.id, Some(last + 1));
        last += 1;
        assert!(
            took < Duration::from_millis(100),
            "an event took {took:?} through nginx"
        );
    }

    // Idle for three read timeouts: heartbeats keep the stream open.
    let pings = sse.pings;
    sse.until_pings(pings + 10).await;
    fake.send(Publish::Public { n: 1, size: 32 });
    assert_eq!(sse.next().await.unwrap().id, Some(last + 1));
    last += 1;

    // Stop the gateway holding the stream; the client resumes through nginx on the other.
    let serving = if a.connections("lobby").await == 1.0 {
        &a
    } else {
        &b
    };
    let other = if std::ptr::eq(serving, &a) { &b } else { &a };
    assert_eq!(serving.connections("lobby").await, 1.0);
    fake.send(Publish::Public { n: 3, size: 32 });
    serving.terminate();
    fake.send(Publish::Public { n: 3, size: 32 });
    let mut seen = Vec::new();
    let target = last + 9;
    while last < target {
        match sse.next().await {
            Some(ev) => {
                let id = ev.id.unwrap();
                assert_eq!(id, last + 1, "no gap, no repeat");
                seen.push(id);
                last = id;
                if seen.len() == 6 {
                    fake.send(Publish::Public { n: 3, size: 32 });
                }
            }
            // As EventSource does: reconnect with the last id seen.
            None => sse = Sse::connect(&url, &[("Last-Event-ID", &last.to_string())]).await,
        }
    }
    assert_eq!(
        other.connections("lobby").await,
        1.0,
        "resumed on the other gateway"
    );
}

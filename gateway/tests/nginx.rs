//! The shipped nginx config (`deploy/nginx`), run by real nginx in front of gateway
//! processes: no buffering, streams outlive the read timeout, failover resumes without gaps,
//! tokens stay out of nginx's logs, and open streams are limited per client address.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, FakeStream, GatewayProcess, Publish, Setup, Sse, WAIT};
use futures::StreamExt;
use proto::{PlayerId, RoomCode};
use tokio::time::timeout;

struct Nginx {
    child: Child,
    port: u16,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Renders deploy/nginx for these upstreams with a short read timeout, and starts it.
    async fn start(upstreams: &[&GatewayProcess], read_timeout: &str) -> Nginx {
        let addrs: Vec<String> = upstreams.iter().map(|g| g.addr.to_string()).collect();
        Nginx::start_with(&addrs, read_timeout, &[]).await
    }

    /// The same for upstream addresses (live or not), with render's environment (`env`).
    /// The port is picked free, then nginx binds it: another process may take it in between,
    /// and then nginx exits at once; it is started again on another port. (Ready: its pid
    /// file names it, which nginx writes once it has bound its port, and `/healthz` answers.)
    async fn start_with(upstreams: &[String], read_timeout: &str, env: &[(&str, &str)]) -> Nginx {
        for _ in 0..5 {
            let mut nginx = Self::spawn(upstreams, read_timeout, env);
            let healthz = nginx.url("/healthz");
            let served = timeout(WAIT, async {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                loop {
                    tick.tick().await;
                    if nginx.child.try_wait().unwrap().is_some() {
                        return false;
                    }
                    if nginx.bound() && common::ready(&healthz).await {
                        return true;
                    }
                }
            })
            .await
            .expect("nginx proxies in time");
            if served {
                return nginx;
            }
        }
        panic!("nginx did not start on any of five free ports");
    }

    /// Renders the config for a free port and starts nginx on it.
    fn spawn(upstreams: &[String], read_timeout: &str, env: &[(&str, &str)]) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        let port = free_port();
        let render = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/render");
        let mut args = vec![
            prefix.path().display().to_string(),
            format!("127.0.0.1:{port}"),
            prefix.path().display().to_string(),
            read_timeout.to_owned(),
        ];
        args.extend(upstreams.iter().cloned());
        let rendered = Command::new(render)
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
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
        Nginx {
            child,
            port,
            _prefix: prefix,
        }
    }

    /// Whether this nginx has bound its port: its pid file (deploy/nginx's `pid`) names it.
    fn bound(&self) -> bool {
        let pid = std::fs::read_to_string(self._prefix.path().join("nginx.pid"));
        pid.is_ok_and(|pid| pid.trim() == self.child.id().to_string())
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self, name: &str) -> String {
        let path: PathBuf = self._prefix.path().join(name);
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: a killed master leaves its workers running on the port.
    fn drop(&mut self) {
        // One that exited (its port taken) and was reaped: its pid may be another's now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
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
    // Three more once the client has resumed: however many of the first six the stopping
    // gateway still sent, the client ends up with all nine, in order, the last three from
    // the other gateway.
    let target = last + 9;
    let mut resumed = false;
    while !resumed || last < target {
        match sse.next().await {
            Some(ev) => {
                let id = ev.id.unwrap();
                assert_eq!(id, last + 1, "no gap, no repeat");
                last = id;
            }
            // As EventSource does: reconnect with the last id seen.
            None => {
                sse = Sse::connect(&url, &[("Last-Event-ID", &last.to_string())]).await;
                if !resumed {
                    resumed = true;
                    fake.send(Publish::Public { n: 3, size: 32 });
                }
            }
        }
    }
    assert_eq!(
        other.connections("lobby").await,
        1.0,
        "resumed on the other gateway"
    );
}

/// A room stream opened with `?token=` (as the page's EventSource does) through nginx, whose
/// first upstream is down, so nginx fails over and would log the request line as an error:
/// the request is in access.log, the token in neither log.
#[tokio::test]
async fn tokens_in_the_query_stay_out_of_nginx_logs() {
    let s = Setup::new(|_| {}).await;
    let code = RoomCode::parse("7QK3M9XRT2VA").unwrap();
    let ann = PlayerId::parse("ann12345").unwrap();
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let gateway = GatewayProcess::start(&s.nats.url(), &s.keys, &[]).await;
    let dead = format!("127.0.0.1:{}", free_port());
    // One worker: its round robin sends the first stream to the first upstream, the dead one.
    let upstreams = [dead.clone(), gateway.addr.to_string()];
    let nginx = Nginx::start_with(&upstreams, "10s", &[("WORKER_PROCESSES", "1")]).await;

    let token = common::token(&code, &ann, 3600);
    let path = format!("/v1/rooms/{code}/events");
    let mut sse = Sse::connect(&nginx.url(&format!("{path}?token={token}")), &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next().await.unwrap().event, "snapshot");
    fake.send(Publish::Private(ann.clone()));
    assert!(sse.next().await.unwrap().data.contains("ann12345"));
    drop(sse); // nginx logs a request when it ends

    let request = format!("GET {path}");
    common::poll_until("the stream in access.log", || {
        let logged = nginx.log("access.log").contains(&request);
        async move { logged }
    })
    .await;
    let access = nginx.log("access.log");
    let error = nginx.log("error.log");
    for (name, text) in [("access.log", &access), ("error.log", &error)] {
        assert!(
            !text.contains(&token),
            "the token is in nginx's {name}:\n{text}"
        );
        assert!(
            !text.contains("token="),
            "a query with a token in {name}:\n{text}"
        );
    }
    let logged = access.lines().find(|l| l.contains(&request)).unwrap();
    assert!(
        logged.contains(&format!("\"GET {path} HTTP/1.1\"")),
        "the request is logged by its path: {logged}"
    );
    assert!(
        logged.contains(&format!("upstream={dead}")),
        "the stream failed over from the dead upstream (so a request error happened): {logged}"
    );
}

/// GET `url` from the client address `from`: the status and the first bytes of the body.
async fn get_from(from: IpAddr, url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap();
    let resp = timeout(WAIT, client.get(url).send())
        .await
        .expect("response in time")
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.bytes_stream();
    let first = timeout(WAIT, body.next())
        .await
        .expect("body in time")
        .map(|chunk| String::from_utf8_lossy(&chunk.unwrap()).into_owned())
        .unwrap_or_default();
    (status, first)
}

/// STREAMS_PER_ADDR open streams from one address, the next refused with 429 and a JSON body;
/// another address still gets in, and a closed stream frees its place.
#[tokio::test]
async fn open_streams_are_limited_per_client_address() {
    let s = Setup::new(|_| {}).await;
    let _fake = FakeStream::start(&s, None, true).await;
    let gateway = GatewayProcess::start(&s.nats.url(), &s.keys, &[]).await;
    let nginx = Nginx::start_with(
        &[gateway.addr.to_string()],
        "10s",
        &[("STREAMS_PER_ADDR", "3")],
    )
    .await;
    let lobby = nginx.url("/v1/lobby/events");

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut sse = Sse::connect(&lobby, &[]).await;
        assert_eq!(sse.status, 200);
        assert_eq!(sse.next().await.unwrap().event, "snapshot");
        open.push(sse);
    }
    let refused = Sse::connect(&lobby, &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.headers.get("content-type").unwrap(),
        "application/json"
    );
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(refused.error_body().await["error"], "too_many_streams");
    // Room streams count against the same limit (refused before any token check).
    let room = Sse::connect(&nginx.url("/v1/rooms/7QK3M9XRT2VA/events"), &[]).await;
    assert_eq!(room.status, 429);

    // Another client address is not affected.
    let (status, first) = get_from("127.0.0.2".parse().unwrap(), &lobby).await;
    assert_eq!(status, 200, "{first}");
    // Only concurrent streams count: closing one lets the next in.
    drop(open.pop());
    common::poll_until("a closed stream frees its place", || async {
        get_from("127.0.0.1".parse().unwrap(), &lobby).await.0 == 200
    })
    .await;
}

/// Creates and joins beyond CREATE_RATE / CREATE_BURST from one address are refused with 429,
/// a JSON body and `Retry-After` (whatever the gateway behind would have answered: here, with
/// no engine, 503).
#[tokio::test]
async fn creates_and_joins_are_rate_limited_per_client_address() {
    let s = Setup::new(|_| {}).await;
    let gateway = GatewayProcess::start(&s.nats.url(), &s.keys, &[]).await;
    let limits = [("CREATE_RATE", "1r/m"), ("CREATE_BURST", "1")];
    let nginx = Nginx::start_with(&[gateway.addr.to_string()], "10s", &limits).await;
    let client = reqwest::Client::new();
    let create = || async {
        let request = client
            .post(nginx.url("/v1/rooms"))
            .header("Content-Type", "application/json")
            .body(r#"{"title":"t","total":3,"mafia":1}"#);
        timeout(WAIT, request.send())
            .await
            .expect("answer in time")
            .unwrap()
    };
    // The rate's one and the burst's one go through to the gateway.
    for _ in 0..2 {
        assert_eq!(create().await.status(), 503, "no engine behind the gateway");
    }
    let refused = create().await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    // Joins share the limit, whatever the code looks like: as drawn, or as a person types it
    // (which the gateway accepts too).
    for code in ["7QK3M9XRT2VA", "7QK3-M9XR-T2VA"] {
        let join = client
            .post(nginx.url(&format!("/v1/rooms/{code}/join")))
            .header("Content-Type", "application/json")
            .body(r#"{"name":"Ann"}"#);
        let join = timeout(WAIT, join.send()).await.unwrap().unwrap();
        assert_eq!(join.status(), 429, "a join to {code}");
    }
}

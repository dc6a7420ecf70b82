//! A TCP proxy in front of nats-server that can cut a client's connection at the worst
//! moment: just as it publishes to a chosen subject. That message and everything the client
//! sends after it on that connection are lost, and the connection closes, as when a NATS
//! node dies with a client's last writes in flight. The client reconnects through the proxy,
//! which forwards its next connections untouched.
//!
//! Only the client-to-server direction is read, one protocol operation at a time (`PUB` and
//! `HPUB` carry a payload of the size their line gives; every other operation is one line);
//! the server-to-client direction is copied as it comes. Blocking threads, so that it needs
//! no runtime: the tests that use it run their own.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The proxy; it stops accepting when dropped (connections it carries stay up).
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The subject whose next publish cuts its connection, while armed.
    armed: Mutex<Option<String>>,
    cuts: AtomicUsize,
    stopped: AtomicBool,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (`nats://host:port` or `host:port`).
    pub fn start(upstream: &str) -> CutProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("nats://")
            .parse()
            .expect("upstream is host:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let shared = accepting.clone();
                std::thread::spawn(move || carry(client, server, &shared));
            }
        });
        CutProxy { addr, shared }
    }

    /// `nats://127.0.0.1:<port>`, for the client to connect to.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The next publish to `subject`, on any connection, is lost with everything after it on
    /// its connection, which is closed.
    pub fn cut_at_publish(&self, subject: &str) {
        *self.shared.armed.lock().expect("proxy lock") = Some(subject.to_owned());
    }

    /// How many connections have been cut.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so that it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Carries one connection until either side closes or it is cut.
fn carry(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'connection: loop {
        let n = match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(op) = next_op(&pending) {
            if op.subject.is_some() && cuts_here(shared, op.subject.as_deref()) {
                shared.cuts.fetch_add(1, Ordering::Relaxed);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
            if server.write_all(&pending[..op.len]).is_err() {
                break 'connection;
            }
            pending.drain(..op.len);
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}

/// Whether a publish to `subject` is the one the proxy is armed for (and disarms it).
fn cuts_here(shared: &Shared, subject: Option<&str>) -> bool {
    let mut armed = shared.armed.lock().expect("proxy lock");
    if armed.as_deref().is_some_and(|s| Some(s) == subject) {
        *armed = None;
        return true;
    }
    false
}

/// One complete client operation at the front of `buf`.
struct Op {
    len: usize,
    /// The subject, for `PUB` and `HPUB`.
    subject: Option<String>,
}

/// The first complete operation in `buf`, if it holds one.
fn next_op(buf: &[u8]) -> Option<Op> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut words = line.split_ascii_whitespace();
    let verb = words.next().unwrap_or_default().to_ascii_uppercase();
    if verb != "PUB" && verb != "HPUB" {
        return Some(Op {
            len: line_end + 2,
            subject: None,
        });
    }
    let words: Vec<&str> = words.collect();
    // `PUB <subject> [reply] <size>`, `HPUB <subject> [reply] <header size> <total size>`:
    // the payload's size is the last word either way.
    let size: usize = words.last()?.parse().ok()?;
    let len = line_end + 2 + size + 2;
    (buf.len() >= len).then(|| Op {
        len,
        subject: words.first().map(|s| (*s).to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_read_whole() {
        let buf = b"PING\r\nHPUB a.b _INBOX.1 12 17\r\nNATS/1.0\r\n\r\nhello\r\nPUB c 2\r\nhi\r\nSUB x 1\r\n";
        let ping = next_op(buf).unwrap();
        assert_eq!((ping.len, ping.subject), (6, None));
        let rest = &buf[6..];
        let hpub = next_op(rest).unwrap();
        assert_eq!(hpub.subject.as_deref(), Some("a.b"));
        let rest = &rest[hpub.len..];
        let publish = next_op(rest).unwrap();
        assert_eq!((publish.len, publish.subject.as_deref()), (13, Some("c")));
        assert_eq!(next_op(&rest[13..]).unwrap().len, 9);
        assert!(
            next_op(b"PUB c 5\r\nhi").is_none(),
            "payload not all here yet"
        );
        assert!(next_op(b"PUB c 5").is_none(), "line not all here yet");
    }
}

//! Turning events into SSE frames, once per event.
//!
//! A frame is `id: <Sse-Id>\nevent: <Sse-Event>\ndata: <body>\n\n`, built from the NATS headers
//! and the raw body without parsing it; the resulting `Bytes` is shared by every connection
//! that receives the event.

use async_nats::Message;
use bytes::{BufMut, Bytes, BytesMut};
use proto::event::{RoomClosed, RoomEvent, RoomSnapshot};
use proto::headers::{SSE_EVENT, SSE_ID};

/// One serialised SSE event and its id.
#[derive(Clone, Debug)]
pub struct Frame {
    pub id: u64,
    pub bytes: Bytes,
    /// A `snapshot`: it replaces the client's state, so it is sent even when its id is not
    /// above the last one (an engine that restarted counts from zero again).
    pub snapshot: bool,
    /// A `room_closed`: nothing follows it on a room stream.
    pub closes_room: bool,
}

/// Reads the id of a published event, or `None` when it has no valid `Sse-Id`.
pub fn event_id(msg: &Message) -> Option<u64> {
    msg.headers.as_ref()?.get(SSE_ID)?.as_str().parse().ok()
}

impl Frame {
    /// The frame for a NATS event, or `None` when it lacks a valid `Sse-Id` (dropped and
    /// counted by the caller).
    pub fn from_message(msg: &Message) -> Option<Frame> {
        let id = event_id(msg)?;
        let event = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(SSE_EVENT))
            .map(|v| v.as_str())
            .unwrap_or("message");
        Some(Frame::encode(id, event, &msg.payload))
    }

    /// `id`, `event` and the body as `data:` lines (one per line of the body).
    pub fn encode(id: u64, event: &str, data: &[u8]) -> Frame {
        let mut out = BytesMut::with_capacity(data.len() + event.len() + 40);
        let mut ids = itoa::Buffer::new();
        out.put_slice(b"id: ");
        out.put_slice(ids.format(id).as_bytes());
        // An event name with a line break would forge fields; such a name is dropped.
        if !event.is_empty() && !event.contains(['\n', '\r']) {
            out.put_slice(b"\nevent: ");
            out.put_slice(event.as_bytes());
        }
        out.put_u8(b'\n');
        for line in lines(data) {
            out.put_slice(b"data: ");
            out.put_slice(line);
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
        Frame {
            id,
            bytes: out.freeze(),
            snapshot: event == RoomSnapshot::NAME,
            closes_room: event == RoomClosed::NAME,
        }
    }
}

/// Splits on `\n`, `\r\n` and `\r`, the line ends of the SSE format.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.iter().position(|b| *b == b'\n' || *b == b'\r') {
            Some(i) => {
                let skip = if current[i] == b'\r' && current.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&current[i + skip..]);
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: &Frame) -> &str {
        std::str::from_utf8(&f.bytes).unwrap()
    }

    #[test]
    fn a_frame_has_id_event_and_data() {
        let f = Frame::encode(42, "phase", br#"{"phase":"day"}"#);
        assert_eq!(f.id, 42);
        assert_eq!(
            text(&f),
            "id: 42\nevent: phase\ndata: {\"phase\":\"day\"}\n\n"
        );
    }

    #[test]
    fn every_line_of_the_body_becomes_a_data_line() {
        let f = Frame::encode(1, "chat", b"a\nb\r\nc\rd");
        assert_eq!(
            text(&f),
            "id: 1\nevent: chat\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn an_event_name_cannot_inject_fields() {
        let f = Frame::encode(1, "x\nid: 999", b"{}");
        assert_eq!(text(&f), "id: 1\ndata: {}\n\n");
    }
}

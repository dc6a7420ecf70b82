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

    /// A reader of the SSE format as browsers implement it (WHATWG HTML, "event stream
    /// interpretation"): the fields of one event, `data` lines joined with `\n`.
    fn read_sse(bytes: &[u8]) -> (Option<String>, Option<String>, Vec<u8>, usize) {
        let (mut id, mut event, mut data, mut events) = (None, None, Vec::new(), 0);
        let mut data_lines: Vec<&[u8]> = Vec::new();
        // What follows the last line end is not a line.
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        for line in lines(bytes) {
            if line.is_empty() {
                events += 1;
                continue;
            }
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"id" => id = Some(String::from_utf8_lossy(value).into_owned()),
                b"event" => event = Some(String::from_utf8_lossy(value).into_owned()),
                b"data" => data_lines.push(value),
                _ => {}
            }
        }
        data.extend(data_lines.join(&b'\n'));
        (id, event, data, events)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Whatever a backend publishes (any bytes, any event name), a browser reads back one
        /// event with the id, the name (or none, for a name that would break the framing) and
        /// the body, its line ends made `\n`.
        #[test]
        fn any_event_reads_back_as_one_event_with_its_id_name_and_body(
            id in proptest::prelude::any::<u64>(),
            event in "[ -~\r\n]{0,12}",
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let frame = Frame::encode(id, &event, &data);
            let (read_id, read_event, read_data, events) = read_sse(&frame.bytes);
            proptest::prop_assert_eq!(events, 1, "one blank line ends exactly one event");
            proptest::prop_assert_eq!(read_id, Some(id.to_string()));
            let named = !event.is_empty() && !event.contains(['\n', '\r']);
            let expected_event = named.then(|| event.clone());
            proptest::prop_assert_eq!(read_event, expected_event);
            let expected: Vec<u8> = lines(&data).collect::<Vec<_>>().join(&b'\n');
            proptest::prop_assert_eq!(read_data, expected);
        }
    }

    #[test]
    fn an_event_name_cannot_inject_fields() {
        let f = Frame::encode(1, "x\nid: 999", b"{}");
        assert_eq!(text(&f), "id: 1\ndata: {}\n\n");
    }
}

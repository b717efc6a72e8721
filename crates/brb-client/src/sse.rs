//! An incremental Server-Sent Events parser (the WHATWG event-stream format), with no I/O.
//!
//! Bytes arrive in arbitrary chunks (a frame may be split anywhere, even inside a UTF-8
//! sequence or between `\r` and `\n`); [`Parser::feed`] buffers what is incomplete and returns
//! every event completed so far. Lines longer than [`MAX_LINE`] are a protocol error rather than
//! a way to make the client buffer without bound.

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `message` when the stream named none.
    pub event: String,
    /// The last `id:` seen on the stream (carried over as the spec says).
    pub id: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event-stream line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` of the next chunk belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// Reconnection delay the server asked for, in milliseconds.
    pub retry_ms: Option<u64>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(r) = rest.strip_prefix(b"\n") {
                rest = r;
            }
        }
        // Whole runs of line bytes at a time: a chunk is usually one or two complete frames.
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push(&rest[..i])?;
            self.end_line(&mut out);
            let cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push(rest)?;
        Ok(out)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            self.line.clear();
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        // Valid UTF-8 (always, from our server) takes the fast check; only invalid input
        // pays for the lossy, replacing path.
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            // An id containing NUL is ignored, per the spec.
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            b"retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(Event {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            id: self.last_id.clone(),
            data: std::mem::take(&mut self.data),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_and_ignores_comments() {
        let mut p = Parser::new();
        let ev = p
            .feed(b"retry: 1000\n\n: keep-alive\n\nevent: switch\nid: 7\ndata: {\"a\":1}\n\n")
            .unwrap();
        assert_eq!(
            ev,
            vec![Event {
                event: "switch".into(),
                id: Some("7".into()),
                data: "{\"a\":1}".into()
            }]
        );
        assert_eq!(p.retry_ms, Some(1000));
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn split_anywhere_and_crlf() {
        let stream = b"event: x\r\ndata: a\r\ndata: b\r\n\r\ndata: c\n\n";
        for cut in 0..stream.len() {
            let mut p = Parser::new();
            let mut ev = p.feed(&stream[..cut]).unwrap();
            ev.extend(p.feed(&stream[cut..]).unwrap());
            assert_eq!(ev.len(), 2, "cut at {cut}");
            assert_eq!(ev[0].data, "a\nb");
            assert_eq!(ev[0].event, "x");
            assert_eq!(ev[1].event, "message");
            assert_eq!(ev[1].data, "c");
        }
    }

    #[test]
    fn overlong_line_is_an_error() {
        let mut p = Parser::new();
        let big = vec![b'a'; MAX_LINE + 1];
        assert_eq!(p.feed(&big), Err(SseError::LineTooLong));
    }

    proptest::proptest! {
        // The same property as the `sse_parser` fuzz target (make fuzz), in make test.
        #[test]
        fn any_bytes_cut_anywhere_parse_the_same(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), cut in 0usize..400) {
            let mut whole = Parser::new();
            let a = whole.feed(&data);
            let at = cut.min(data.len());
            let mut split = Parser::new();
            let b = split.feed(&data[..at]).and_then(|mut first| {
                first.extend(split.feed(&data[at..])?);
                Ok(first)
            });
            proptest::prop_assert_eq!(a, b);
        }

        #[test]
        fn well_formed_events_come_back(events in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,40}", 0u64..1000), 0..10)) {
            let mut text = String::new();
            for (ev, data, id) in &events {
                text.push_str(&format!("event: {ev}\nid: {id}\ndata: {data}\n\n"));
            }
            let mut p = Parser::new();
            let got = p.feed(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(got.len(), events.len());
            for (g, (ev, data, id)) in got.iter().zip(&events) {
                proptest::prop_assert_eq!(&g.event, ev);
                proptest::prop_assert_eq!(g.id.clone(), Some(id.to_string()));
                proptest::prop_assert_eq!(&g.data, data);
            }
        }
    }
}

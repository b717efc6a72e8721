//! Just enough of the Redis protocol (RESP2) for the two crates that speak it: encoding a
//! command, and an incremental parser for what comes back. No I/O: bytes in, values out.
//!
//! A crate of its own so that the two share one codec without either depending on the
//! other: `brb-adapter` (a job system's pause flag, one command at a time) and `brb-bench`
//! (the pub/sub baseline's subscribers). Not a Redis client crate: that would do more than
//! both need and grow the dependency graph, and the baseline's subscribers, written like our
//! gates' stream reader, do comparable work on both sides of the benchmark's comparison.

/// Nested arrays deeper than this are refused rather than recursed into.
const MAX_DEPTH: usize = 8;

/// A bulk string longer than this is refused: the adapters read flags and small numbers, the
/// baseline a switch's JSON.
pub const MAX_BULK: usize = 1 << 20;

/// One RESP value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array. RESP3 pushes (`>`) parse as arrays too.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// A bulk string, simple string or integer as text (`None` for null or another type).
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Simple(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("invalid RESP: {0}")]
    Invalid(&'static str),
}

/// A command as an array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one value from the front of `buf`: `Ok(Some((value, bytes used)))`, or `Ok(None)`
/// when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    parse_at(buf, 0)
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let i = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..i], i + 2))
}

fn int(b: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Invalid("bad integer"))
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::Invalid("nested too deep"));
    }
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((head, used)) = line(&buf[1..]) else {
        return Ok(None);
    };
    let used = used + 1;
    let text = || String::from_utf8_lossy(head).into_owned();
    match kind {
        b'+' => Ok(Some((Value::Simple(text()), used))),
        b'-' => Ok(Some((Value::Error(text()), used))),
        b':' => Ok(Some((Value::Int(int(head)?), used))),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), used)));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(RespError::Invalid("bulk string too large"));
            }
            if buf.len() < used + n + 2 {
                return Ok(None);
            }
            if &buf[used + n..used + n + 2] != b"\r\n" {
                return Err(RespError::Invalid("bulk string not followed by CRLF"));
            }
            Ok(Some((
                Value::Bulk(Some(buf[used..used + n].to_vec())),
                used + n + 2,
            )))
        }
        b'*' | b'>' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Value::Array(None), used)));
            }
            let mut items = Vec::with_capacity((n as usize).min(64));
            let mut at = used;
            for _ in 0..n {
                match parse_at(&buf[at..], depth + 1)? {
                    Some((v, u)) => {
                        items.push(v);
                        at += u;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        _ => Err(RespError::Invalid("unknown type byte")),
    }
}

/// The payload of a pub/sub `message` push, if `v` is one.
pub fn message_payload(v: &Value) -> Option<&[u8]> {
    let Value::Array(Some(items)) = v else {
        return None;
    };
    match items.as_slice() {
        [
            Value::Bulk(Some(kind)),
            Value::Bulk(Some(_channel)),
            Value::Bulk(Some(payload)),
        ] if kind == b"message" => Some(payload),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            command(&[b"PUBLISH", b"ch", b"hi"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nhi\r\n".to_vec()
        );
        assert_eq!(
            command(&[b"SET", b"k", b"1"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n".to_vec()
        );
    }

    #[test]
    fn parses_replies_and_messages() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Value::Simple("OK".into()), 5))
        );
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Value::Int(42), 5)));
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            Some((Value::Error("ERR no".into()), 9))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Value::Bulk(None), 5)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Value::Array(None), 5)));
        assert_eq!(
            parse(b"*2\r\n:1\r\n$1\r\nx\r\n").unwrap(),
            Some((
                Value::Array(Some(vec![Value::Int(1), Value::Bulk(Some(b"x".to_vec()))])),
                15
            ))
        );
        let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n:1\r\n";
        let (v, used) = parse(msg).unwrap().unwrap();
        assert_eq!(message_payload(&v), Some(&b"hello"[..]));
        assert_eq!(&msg[used..], b":1\r\n");
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let (v, _) = parse(sub).unwrap().unwrap();
        assert_eq!(message_payload(&v), None);
        // A RESP3 push reads as an array.
        let (v, _) = parse(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(message_payload(&v), Some(&b"hi"[..]));
        // A binary payload with CRLF inside is taken by its length, not its content.
        let (v, _) = parse(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\na\r\nb\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(message_payload(&v), Some(&b"a\r\nb"[..]));
    }

    #[test]
    fn text_of_values() {
        assert_eq!(
            Value::Bulk(Some(b"7".to_vec())).text().as_deref(),
            Some("7")
        );
        assert_eq!(Value::Simple("OK".into()).text().as_deref(), Some("OK"));
        assert_eq!(Value::Int(-2).text().as_deref(), Some("-2"));
        assert_eq!(Value::Bulk(None).text(), None);
        assert_eq!(Value::Error("ERR".into()).text(), None);
    }

    #[test]
    fn incomplete_input_waits_for_more_at_every_cut() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(msg).unwrap().is_some());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"$2\r\nabcd\r\n").is_err());
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        // Refused from its header, before any of it has arrived.
        assert_eq!(
            parse(format!("${}\r\n", MAX_BULK + 1).as_bytes()),
            Err(RespError::Invalid("bulk string too large"))
        );
    }
}

//! The shared test vectors (`docs/protocol-vectors.txt`), also run by the firmware's host tests.
#![allow(clippy::unwrap_used)]

use brb_protocol::{DeviceMsg, HostMsg, hid, line};

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let h = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

struct Vector {
    kind: String,
    meaning: String,
    message: String,
    line: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol-vectors.txt"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let v: Vec<Vector> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "malformed vector line: {l:?}");
            Vector {
                kind: f[0].into(),
                meaning: f[1].into(),
                message: f[2].into(),
                line: unescape(f[3]),
            }
        })
        .collect();
    assert!(v.len() > 30, "only {} vectors", v.len());
    v
}

fn decode_any(bytes: &[u8]) -> Result<String, String> {
    // Try the device direction first, then the host direction: message types do not overlap.
    match DeviceMsg::decode(bytes) {
        Ok(m) => Ok(m.to_string()),
        Err(brb_protocol::MessageError::UnknownType(_)) => HostMsg::decode(bytes)
            .map(|m| m.to_string())
            .map_err(|e| e.kind().to_string()),
        Err(e) => Err(e.kind().to_string()),
    }
}

#[test]
fn messages_encode_decode_and_frame_as_the_vectors_say() {
    let mut seen = 0;
    for v in vectors()
        .iter()
        .filter(|v| v.kind == "d2h" || v.kind == "h2d")
    {
        let bytes = hex::decode(&v.message);
        // Decoding gives the canonical text...
        let text = if v.kind == "d2h" {
            let m = DeviceMsg::decode(&bytes).unwrap();
            assert_eq!(m.encode(), bytes, "{}", v.meaning);
            m.to_string()
        } else {
            let m = HostMsg::decode(&bytes).unwrap();
            assert_eq!(m.encode(), bytes, "{}", v.meaning);
            m.to_string()
        };
        assert_eq!(text, v.meaning);
        // ...the line is exactly the vector's, and decodes back to the message.
        assert_eq!(
            line::encode(&bytes),
            v.line,
            "{}: {}",
            v.meaning,
            String::from_utf8_lossy(&v.line)
        );
        let out = line::Decoder::new().feed(&v.line);
        assert_eq!(out, vec![Ok(bytes.clone())], "{}", v.meaning);
        // ...and the HID report carries it too.
        let r = hid::pack(&bytes).unwrap();
        assert_eq!(usize::from(r[0]), bytes.len());
        assert_eq!(hid::unpack(&r).unwrap(), &bytes[..]);
        seen += 1;
    }
    assert!(seen >= 20);
}

#[test]
fn bad_lines_are_rejected_with_the_named_error() {
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v.kind == "bad") {
        let out = line::Decoder::new().feed(&v.line);
        assert_eq!(out.len(), 1, "{:?}", String::from_utf8_lossy(&v.line));
        let kind = match &out[0] {
            Err(e) => e.kind().to_string(),
            Ok(bytes) => decode_any(bytes)
                .err()
                .unwrap_or_else(|| panic!("{:?} was accepted", String::from_utf8_lossy(&v.line))),
        };
        assert_eq!(kind, v.meaning, "{:?}", String::from_utf8_lossy(&v.line));
        seen += 1;
    }
    assert!(seen >= 10);
}

#[test]
fn streams_with_garbage_yield_exactly_their_messages() {
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v.kind == "stream") {
        let want: Vec<&str> = v.meaning.split('|').collect();
        // Whole, and byte by byte: framing must not depend on how reads are chunked.
        let mut d = line::Decoder::new();
        let whole: Vec<String> = d
            .feed(&v.line)
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|b| decode_any(&b).ok())
            .collect();
        assert_eq!(whole, want);
        let mut d = line::Decoder::new();
        let single: Vec<String> = v
            .line
            .iter()
            .filter_map(|&c| d.push(c))
            .filter_map(Result::ok)
            .filter_map(|b| decode_any(&b).ok())
            .collect();
        assert_eq!(single, want);
        seen += 1;
    }
    assert!(seen >= 3);
}

mod hex {
    pub fn decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}

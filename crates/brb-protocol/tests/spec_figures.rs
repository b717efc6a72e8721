//! The figures `docs/protocol.md` states about sizes, computed from the real encoder: the
//! longest message, the frame limit and which characters count toward it, the HID length byte.
//! A doc that drifts from the code fails here.
#![allow(clippy::unwrap_used)]

use brb_protocol::{
    Capabilities, DeviceMsg, Hello, HostMsg, LONGEST_DEFINED, MAX_MESSAGE, MAX_SERIAL, ShowState,
    hid, line,
};

/// The doc with its line breaks and runs of spaces made single spaces, so that a sentence is
/// found wherever the paragraph happens to wrap.
fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The number right after `prefix` in the doc (the doc's wording is part of the check).
fn figure(doc: &str, prefix: &str) -> usize {
    let at = doc
        .find(prefix)
        .unwrap_or_else(|| panic!("docs/protocol.md no longer says {prefix:?}"));
    let digits: String = doc[at + prefix.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?}"))
}

/// Every device message type at its longest. The match has no wildcard: a new message type
/// does not compile until it is added here.
fn longest_device_messages() -> Vec<DeviceMsg> {
    let all = vec![
        DeviceMsg::Hello(Hello {
            protocol: u8::MAX,
            firmware: [u8::MAX; 3],
            capabilities: Capabilities(u8::MAX),
            // Longer than allowed on purpose: the encoder must cut it, not overflow.
            serial: "S".repeat(MAX_SERIAL + 10),
        }),
        DeviceMsg::Press {
            seq: u16::MAX,
            armed: true,
        },
        DeviceMsg::Release {
            seq: u16::MAX,
            hold_ms: u32::MAX,
            armed: true,
        },
        DeviceMsg::Arming { armed: true },
        DeviceMsg::Heartbeat {
            uptime_ms: u32::MAX,
            shown: ShowState::Sending,
            armed: true,
        },
    ];
    for m in &all {
        match m {
            DeviceMsg::Hello(_)
            | DeviceMsg::Press { .. }
            | DeviceMsg::Release { .. }
            | DeviceMsg::Arming { .. }
            | DeviceMsg::Heartbeat { .. } => {}
        }
    }
    all
}

fn longest_host_messages() -> Vec<HostMsg> {
    let mut all: Vec<HostMsg> = ShowState::ALL.iter().map(|&s| HostMsg::Show(s)).collect();
    all.push(HostMsg::Ping);
    for m in &all {
        match m {
            HostMsg::Show(_) | HostMsg::Ping => {}
        }
    }
    all
}

fn longest_encoded() -> usize {
    longest_device_messages()
        .iter()
        .map(|m| m.encode().len())
        .chain(longest_host_messages().iter().map(|m| m.encode().len()))
        .max()
        .unwrap()
}

#[test]
fn the_longest_message_is_what_the_doc_says() {
    let longest = longest_encoded();
    assert_eq!(longest, LONGEST_DEFINED);
    assert_eq!(
        figure(&doc(), "The longest message defined is "),
        longest,
        "docs/protocol.md"
    );
    // The limit receivers enforce leaves the room the doc promises, and no more.
    assert_eq!(
        figure(&doc(), "a receiver accepts messages of up to "),
        MAX_MESSAGE
    );
    assert_eq!(MAX_MESSAGE, longest + 1);
}

#[test]
fn the_frame_limit_counts_the_hex_digits_of_message_and_crc() {
    let limit = figure(
        &doc(),
        "a frame with a character other than `0-9A-F` (lowercase too), more than ",
    );
    // The doc's arithmetic, redone from the constants.
    let says = [
        format!(
            "The {limit} counts the hex digits between `$` and `\\n`, message and CRC: not the `$`, not the `\\n`, not a `\\r`."
        ),
        format!(
            "A {MAX_MESSAGE}-byte message makes {} + 4 = {limit}; the longest defined ({LONGEST_DEFINED} bytes) makes {};",
            2 * MAX_MESSAGE,
            2 * (LONGEST_DEFINED + 2)
        ),
    ];
    for sentence in says {
        assert!(
            doc().contains(&sentence),
            "docs/protocol.md no longer says: {sentence}"
        );
    }
    assert_eq!(limit, line::MAX_LINE);
    assert_eq!(limit, 2 * (MAX_MESSAGE + 2));

    // The longest defined message's frame: '$', hex digits, '\n'. Only the digits count.
    let hello = longest_device_messages().remove(0).encode();
    let frame = line::encode(&hello);
    assert_eq!(frame.len() - 2, 2 * (LONGEST_DEFINED + 2));
    assert_eq!(line::Decoder::new().feed(&frame), vec![Ok(hello.clone())]);

    // A frame of exactly `limit` digits is not rejected as too long (its 24-byte message is
    // not a defined one, so it fails decoding instead); one digit more is.
    let mut at_limit = b"$".to_vec();
    at_limit.extend(std::iter::repeat_n(b'0', limit));
    at_limit.push(b'\n');
    let out = line::Decoder::new().feed(&at_limit);
    assert!(
        !matches!(out[..], [Err(line::FrameError::TooLong)]),
        "{out:?}"
    );
    let mut over = b"$".to_vec();
    over.extend(std::iter::repeat_n(b'0', limit + 1));
    over.push(b'\n');
    assert_eq!(
        line::Decoder::new().feed(&over),
        vec![Err(line::FrameError::TooLong)]
    );

    // '\r' anywhere in a frame does not count toward the limit (it is ignored).
    let mut with_cr = b"$".to_vec();
    for &c in &frame[1..frame.len() - 1] {
        with_cr.push(c);
        with_cr.extend_from_slice(b"\r\r");
    }
    with_cr.push(b'\n');
    assert_eq!(line::Decoder::new().feed(&with_cr), vec![Ok(hello)]);
}

#[test]
fn the_hid_length_byte_range_is_what_the_doc_says() {
    assert_eq!(
        figure(&doc(), "byte 0 is the message length (1-"),
        MAX_MESSAGE
    );
    let longest = longest_device_messages().remove(0).encode();
    let r = hid::pack(&longest).unwrap();
    assert_eq!(hid::unpack(&r).unwrap(), &longest[..]);
}

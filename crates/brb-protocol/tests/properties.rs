//! Property tests: every message survives both framings; no byte sequence makes a decoder
#![allow(clippy::unwrap_used)]
//! panic, grow without bound, or accept a frame whose CRC does not match.

use brb_protocol::{
    Capabilities, DeviceMsg, Hello, HostMsg, MAX_MESSAGE, ShowState, crc16, hid, line,
};
use proptest::prelude::*;

fn show() -> impl Strategy<Value = ShowState> {
    prop::sample::select(ShowState::ALL.to_vec())
}

fn device_msg() -> impl Strategy<Value = DeviceMsg> {
    prop_oneof![
        (any::<u8>(), any::<[u8; 3]>(), any::<u8>(), "[!-~]{1,16}").prop_map(
            |(protocol, firmware, caps, serial)| DeviceMsg::Hello(Hello {
                protocol,
                firmware,
                capabilities: Capabilities(caps),
                serial,
            })
        ),
        (any::<u16>(), any::<bool>()).prop_map(|(seq, armed)| DeviceMsg::Press { seq, armed }),
        (any::<u16>(), any::<u32>(), any::<bool>()).prop_map(|(seq, hold_ms, armed)| {
            DeviceMsg::Release {
                seq,
                hold_ms,
                armed,
            }
        }),
        any::<bool>().prop_map(|armed| DeviceMsg::Arming { armed }),
        (any::<u32>(), show(), any::<bool>()).prop_map(|(uptime_ms, shown, armed)| {
            DeviceMsg::Heartbeat {
                uptime_ms,
                shown,
                armed,
            }
        }),
    ]
}

fn host_msg() -> impl Strategy<Value = HostMsg> {
    prop_oneof![show().prop_map(HostMsg::Show), Just(HostMsg::Ping)]
}

proptest! {
    #[test]
    fn device_messages_round_trip(m in device_msg()) {
        let bytes = m.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(&DeviceMsg::decode(&bytes).unwrap(), &m);
        let frames = line::Decoder::new().feed(&line::encode(&bytes));
        prop_assert_eq!(frames, vec![Ok(bytes.clone())]);
        let report = hid::pack(&bytes).unwrap();
        prop_assert_eq!(DeviceMsg::decode(hid::unpack(&report).unwrap()).unwrap(), m);
    }

    #[test]
    fn host_messages_round_trip(m in host_msg()) {
        let bytes = m.encode();
        prop_assert_eq!(HostMsg::decode(&bytes).unwrap(), m);
        let frames = line::Decoder::new().feed(&line::encode(&bytes));
        prop_assert_eq!(frames, vec![Ok(bytes.clone())]);
        prop_assert_eq!(HostMsg::decode(hid::unpack(&hid::pack(&bytes).unwrap()).unwrap()).unwrap(), m);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_frames_are_checked(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        let mut d = line::Decoder::new();
        for f in d.feed(&bytes).into_iter().flatten() {
            prop_assert!(!f.is_empty() && f.len() <= MAX_MESSAGE + 2);
            let _ = DeviceMsg::decode(&f);
            let _ = HostMsg::decode(&f);
        }
        let _ = DeviceMsg::decode(&bytes);
        let _ = HostMsg::decode(&bytes);
        let _ = hid::unpack(&bytes);
    }

    #[test]
    fn hex_shaped_noise_never_panics(
        body in proptest::collection::vec(prop_oneof![
            Just(b'$'), Just(b'\n'), Just(b'\r'), (b'0'..=b'9'), (b'A'..=b'F')
        ], 0..400)
    ) {
        // Mostly valid-looking characters reach the CRC check far more often than random bytes.
        let mut d = line::Decoder::new();
        for f in d.feed(&body).into_iter().flatten() {
            prop_assert!(f.len() <= MAX_MESSAGE + 2);
        }
    }

    #[test]
    fn a_good_frame_after_any_garbage_is_found(
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
        m in device_msg()
    ) {
        let bytes = m.encode();
        let mut stream = garbage;
        stream.extend_from_slice(&line::encode(&bytes));
        let out = line::Decoder::new().feed(&stream);
        prop_assert_eq!(out.last().cloned(), Some(Ok(bytes)));
    }

    #[test]
    fn any_single_bit_flip_is_caught(m in device_msg(), bit in 0usize..1000) {
        // The framing itself (hex digits, CRC) must reject any one flipped bit in the body.
        let good = line::encode(&m.encode());
        let body = good.len() - 2; // without '$' and '\n'
        let i = 1 + (bit / 8) % body;
        let mut bad = good.clone();
        bad[i] ^= 1 << (bit % 8);
        let out = line::Decoder::new().feed(&bad);
        prop_assert!(!out.contains(&Ok(m.encode())), "{:?}", out);
    }

    #[test]
    fn crc_detects_single_byte_changes(
        data in proptest::collection::vec(any::<u8>(), 1..30), i in any::<usize>(), x in 1u8..=255
    ) {
        let mut other = data.clone();
        let i = i % data.len();
        other[i] ^= x;
        prop_assert_ne!(crc16(&data), crc16(&other));
    }
}

//! Any bytes from a device: the line decoder and the message decoders return frames or errors,
//! never panic; whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = brb_protocol::line::Decoder::new();
    for frame in d.feed(data).into_iter().flatten() {
        if let Ok(m) = brb_protocol::DeviceMsg::decode(&frame) {
            assert_eq!(brb_protocol::DeviceMsg::decode(&m.encode()).ok(), Some(m));
        }
        let _ = brb_protocol::HostMsg::decode(&frame);
    }
    let _ = brb_protocol::hid::unpack(data);
    let _ = brb_protocol::DeviceMsg::decode(data);
});

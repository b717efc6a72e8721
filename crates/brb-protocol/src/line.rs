//! Serial framing: one message per line, `$` + uppercase hex of the message + 4 uppercase hex
//! digits of its CRC-16 + `\n` (a `\r` before the `\n` is tolerated).
//!
//! Why lines of hex: a serial port is opened at arbitrary moments (the first bytes the host sees
//! may be the middle of a frame) and a bad cable or a confused device can send anything. `$`
//! never occurs inside a frame, so the decoder resynchronises on the next `$`; a frame is
//! accepted only whole, hex-clean, of bounded length and with a matching CRC. Lines are also
//! readable in a terminal (`picocom`), which helps the person wiring the button.

use crate::{MAX_MESSAGE, MessageError, crc16};

/// Longest frame body between `$` and `\n`, in characters.
pub const MAX_LINE: usize = 2 * (MAX_MESSAGE + 2);

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame contains a byte that is not an uppercase hex digit: 0x{0:02x}")]
    NotHex(u8),
    #[error("frame longer than {MAX_LINE} characters")]
    TooLong,
    #[error("frame of {0} characters is too short or odd")]
    BadLength(usize),
    #[error("CRC mismatch: frame says {got:04x}, content gives {want:04x}")]
    BadCrc { got: u16, want: u16 },
    #[error("frame interrupted by a new '$'")]
    Interrupted,
    #[error(transparent)]
    Message(#[from] MessageError),
}

impl FrameError {
    /// The error kind's name in `docs/protocol-vectors.txt`.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::NotHex(_) => "hex",
            FrameError::TooLong => "toolong",
            FrameError::BadLength(_) => "length",
            FrameError::BadCrc { .. } => "crc",
            FrameError::Interrupted => "interrupted",
            FrameError::Message(m) => m.kind(),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The full line for `msg` (message bytes), including `$` and `\n`.
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() * 2 + 6);
    out.push(b'$');
    let crc = crc16(msg);
    for &b in msg.iter().chain(crc.to_be_bytes().iter()) {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    out.push(b'\n');
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Incremental decoder: bytes in, whole CRC-checked message bytes (or errors) out. Bounded
/// memory whatever it is fed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    in_frame: bool,
    /// Bytes seen outside any frame (noise, a boot banner): counted, not reported one by one.
    pub garbage: u64,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            buf: Vec::with_capacity(MAX_LINE),
            in_frame: false,
            garbage: 0,
        }
    }

    /// Feeds one byte; returns a result when a frame ends (well or badly).
    pub fn push(&mut self, c: u8) -> Option<Result<Vec<u8>, FrameError>> {
        if c == b'$' {
            let interrupted = self.in_frame && !self.buf.is_empty();
            self.in_frame = true;
            self.buf.clear();
            return interrupted.then_some(Err(FrameError::Interrupted));
        }
        if !self.in_frame {
            self.garbage += 1;
            return None;
        }
        match c {
            b'\r' => None,
            b'\n' => {
                self.in_frame = false;
                Some(self.finish())
            }
            _ if nibble(c).is_none() => {
                self.in_frame = false;
                self.buf.clear();
                Some(Err(FrameError::NotHex(c)))
            }
            _ if self.buf.len() >= MAX_LINE => {
                self.in_frame = false;
                self.buf.clear();
                Some(Err(FrameError::TooLong))
            }
            _ => {
                self.buf.push(c);
                None
            }
        }
    }

    /// Feeds many bytes; returns every frame they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        bytes.iter().filter_map(|&c| self.push(c)).collect()
    }

    fn finish(&mut self) -> Result<Vec<u8>, FrameError> {
        let n = self.buf.len();
        // At least one message byte and the CRC: 6 characters.
        if n < 6 || !n.is_multiple_of(2) {
            self.buf.clear();
            return Err(FrameError::BadLength(n));
        }
        let mut bytes = Vec::with_capacity(n / 2);
        for pair in self.buf.chunks_exact(2) {
            // Only hex digits were buffered.
            let hi = nibble(pair[0]).unwrap_or(0);
            let lo = nibble(pair[1]).unwrap_or(0);
            bytes.push(hi << 4 | lo);
        }
        self.buf.clear();
        let split = bytes.len() - 2;
        let got = u16::from_be_bytes([bytes[split], bytes[split + 1]]);
        bytes.truncate(split);
        let want = crc16(&bytes);
        if got != want {
            return Err(FrameError::BadCrc { got, want });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceMsg, HostMsg, ShowState};

    #[test]
    fn resynchronises_after_garbage_and_cut_frames() {
        let good = encode(&HostMsg::Show(ShowState::Paused).encode());
        let mut stream = b"\x00\xffboot banner\n$81".to_vec();
        stream.extend_from_slice(&good);
        let mut d = Decoder::new();
        let out = d.feed(&stream);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], Err(FrameError::Interrupted));
        let msg = out[1].clone().unwrap();
        assert_eq!(
            HostMsg::decode(&msg).unwrap(),
            HostMsg::Show(ShowState::Paused)
        );
        assert!(d.garbage >= 12);
    }

    #[test]
    fn rejects_a_flipped_bit() {
        let mut f = encode(
            &DeviceMsg::Press {
                seq: 7,
                armed: true,
            }
            .encode(),
        );
        f[2] = if f[2] == b'0' { b'1' } else { b'0' };
        let out = Decoder::new().feed(&f);
        assert!(
            matches!(out[..], [Err(FrameError::BadCrc { .. })]),
            "{out:?}"
        );
    }

    #[test]
    fn bounded_length() {
        let mut f = vec![b'$'];
        f.extend(std::iter::repeat_n(b'A', MAX_LINE + 10));
        f.push(b'\n');
        let out = Decoder::new().feed(&f);
        assert_eq!(out, vec![Err(FrameError::TooLong)]);
    }

    #[test]
    fn crlf_is_tolerated() {
        let mut f = encode(&HostMsg::Ping.encode());
        f.insert(f.len() - 1, b'\r');
        assert_eq!(Decoder::new().feed(&f), vec![Ok(vec![0x82])]);
    }
}

//! An incremental decoder of HTTP/1.1 chunked framing (RFC 9112 §7.1), with no I/O.
//!
//! The SDK reads plain-HTTP event streams itself (`direct.rs`); their bodies come chunked and
//! cut anywhere by TCP. [`ChunkDecoder::decode`] takes whatever arrived and hands the payload
//! runs on; sizes are bounded (15 hex digits), extensions and trailers skipped, and bytes after
//! the end of the body left alone. Property-tested here and fuzzed (`fuzz/`, target `chunked`).

/// An incremental decoder of HTTP/1.1 chunked framing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    /// Reading the size line's hex digits.
    #[default]
    Size,
    /// After the digits: an extension or the line's end.
    SizeRest,
    /// Payload bytes left in this chunk.
    Data(u64),
    /// The line end after a chunk's payload.
    DataEnd,
    /// Trailer lines after the last chunk; `true` at the start of a line.
    Trailer(bool),
    Done,
}

impl ChunkDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last chunk and the trailer are through: the body ended.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes framing from the front of `input` and hands payload runs to `out`. Returns
    /// how many bytes it consumed (all, unless the body ended).
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]),
    ) -> std::result::Result<usize, String> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Size => {
                    let b = input[i];
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            self.digits += 1;
                            if self.digits > 15 {
                                return Err("chunk size too large".into());
                            }
                            self.size = self.size * 16 + u64::from(d);
                        }
                        None if self.digits == 0 => {
                            return Err("chunk size line without a size".into());
                        }
                        None => {
                            self.state = ChunkState::SizeRest;
                            continue;
                        }
                    }
                    i += 1;
                }
                ChunkState::SizeRest => {
                    if input[i] == b'\n' {
                        self.state = if self.size == 0 {
                            ChunkState::Trailer(true)
                        } else {
                            ChunkState::Data(self.size)
                        };
                        self.size = 0;
                        self.digits = 0;
                    }
                    // `\r`, or a chunk extension: skipped.
                    i += 1;
                }
                ChunkState::Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    match input[i] {
                        b'\r' => {}
                        b'\n' => self.state = ChunkState::Size,
                        _ => return Err("chunk longer than its size".into()),
                    }
                    i += 1;
                }
                ChunkState::Trailer(at_start) => {
                    match input[i] {
                        b'\n' if at_start => self.state = ChunkState::Done,
                        b'\n' => self.state = ChunkState::Trailer(true),
                        b'\r' => {}
                        _ => self.state = ChunkState::Trailer(false),
                    }
                    i += 1;
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[&[u8]]) -> std::result::Result<(Vec<u8>, bool), String> {
        let mut d = ChunkDecoder::default();
        let mut out = Vec::new();
        for part in input {
            d.decode(part, |p| out.extend_from_slice(p))?;
        }
        Ok((out, d.is_done()))
    }

    fn chunked(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for p in parts.iter().filter(|p| !p.is_empty()) {
            wire.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            wire.extend_from_slice(p);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nleftover";
        let mut d = ChunkDecoder::default();
        let mut out = Vec::new();
        let n = d.decode(wire, |p| out.extend_from_slice(p)).unwrap();
        assert_eq!(out, b"hello0123456789");
        assert_eq!(&wire[n..], b"leftover", "stops at the end of the body");
        assert!(d.is_done());
    }

    #[test]
    fn refuses_bad_framing() {
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"3\r\nabcX"]).is_err());
        assert!(decode_all(&[b"ffffffffffffffff\r\n"]).is_err());
    }

    proptest! {
        /// Any payload, cut into any chunks, sent in any pieces, comes out whole.
        #[test]
        fn chunked_round_trip(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let wire = chunked(&parts);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([wire.len()]) {
                pieces.push(&wire[at..c]);
                at = c;
            }
            let (out, done) = decode_all(&pieces).unwrap();
            prop_assert_eq!(out, parts.concat());
            prop_assert!(done);
        }

        /// Any bytes, cut anywhere: never a panic, and where both succeed the same payload.
        #[test]
        fn garbage_decodes_the_same_however_it_is_cut(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cut in 0usize..512,
        ) {
            let cut = cut.min(bytes.len());
            let whole = decode_all(&[&bytes]);
            let split = decode_all(&[&bytes[..cut], &bytes[cut..]]);
            if let (Ok(a), Ok(b)) = (whole, split) {
                prop_assert_eq!(a, b);
            }
        }
    }
}

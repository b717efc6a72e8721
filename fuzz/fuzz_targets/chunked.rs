//! Any bytes as a chunked HTTP body, cut anywhere: the SDK's decoder never panics, and where
//! the whole and the cut input both decode, they yield the same payload.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn decode(parts: &[&[u8]]) -> Result<(Vec<u8>, bool), String> {
    let mut d = brb_client::chunked::ChunkDecoder::new();
    let mut out = Vec::new();
    for p in parts {
        d.decode(p, |b| out.extend_from_slice(b))?;
    }
    Ok((out, d.is_done()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let at = usize::from(cut).min(rest.len());
    if let (Ok(a), Ok(b)) = (decode(&[rest]), decode(&[&rest[..at], &rest[at..]])) {
        assert_eq!(a, b);
    }
});

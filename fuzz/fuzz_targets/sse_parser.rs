//! Any bytes on an event stream, cut anywhere: the parser never panics, and cutting the same
//! bytes differently yields the same events.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let mut whole = brb_client::sse::Parser::new();
    let a = whole.feed(rest);
    let mut split = brb_client::sse::Parser::new();
    let at = usize::from(cut).min(rest.len());
    let b = split.feed(&rest[..at]).and_then(|mut first| {
        first.extend(split.feed(&rest[at..])?);
        Ok(first)
    });
    if let (Ok(a), Ok(b)) = (a, b) {
        assert_eq!(a, b);
    }
});

//! Any text as a config file: an error or a config, never a panic; a parsed config validates or
//! says why not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = brb_server::Config::from_toml(text, std::path::Path::new("fuzz.toml"))
    {
        let _ = cfg.validate();
    }
});

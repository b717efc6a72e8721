//! The web console's files, compiled into the binary so `brb server` serves the UI with no
//! files to deploy next to it. Built from `ui/dist` by `build.rs`; the crate has no
//! dependencies and no I/O at run time.

include!(concat!(env!("OUT_DIR"), "/files.rs"));

/// Shown when the binary was built without the UI (`make` builds it; plain `cargo` does not).
const FALLBACK: &[u8] = b"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Big Red Button</title></head><body><h1>Big Red Button</h1><p>This binary was built without the web console. Build it with <code>make build</code> (which runs <code>npm run build</code> in <code>ui/</code>), then rebuild <code>brb</code>. The API is at <code>/api/v1</code>.</p></body></html>";

/// A file of the console: its bytes and content type. `""` or `/` is the index page.
pub fn get(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if let Some((_, bytes)) = FILES.iter().find(|(p, _)| *p == path) {
        return Some((bytes, content_type(path)));
    }
    (path == "index.html").then_some((FALLBACK, "text/html; charset=utf-8"))
}

/// Whether the real UI (not the fallback) is embedded.
pub fn is_built() -> bool {
    FILES.iter().any(|(p, _)| *p == "index.html")
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_always_there() {
        let (bytes, ct) = get("/").expect("index");
        assert!(ct.starts_with("text/html"));
        assert!(std::str::from_utf8(bytes).expect("utf8").contains("<html"));
        assert!(get("/nope.js").is_none());
        assert_eq!(content_type("a/b.css"), "text/css; charset=utf-8");
    }
}

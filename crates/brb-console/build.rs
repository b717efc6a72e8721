//! Embeds `ui/dist` (the built UI) as a static table of files. When the UI has not been built
//! (a plain `cargo build` without `make`), a one-page fallback explains how to build it, so the
//! Rust build never depends on Node.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-env-changed=BRB_UI_DIST");
    let dist = std::env::var_os("BRB_UI_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../ui/dist"));
    // Cargo reruns a build script on every build while a watched path does not exist, which
    // relinked `brb` on each `make bench-sdk` run where the UI was never built. So watch `dist`
    // when it is there, else its parent: building the UI creates `dist` in it, a change.
    let watched = if dist.exists() {
        dist.clone()
    } else {
        dist.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dist.clone())
    };
    println!("cargo:rerun-if-changed={}", watched.display());
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let mut out = String::from(
        "/// (path, bytes) of every file of the built UI.\npub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for (rel, abs) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        let _ = writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("files.rs");
    std::fs::write(dest, out).expect("write files.rs");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            println!("cargo:rerun-if-changed={}", p.display());
            collect(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            out.push((rel, p.canonicalize().unwrap_or(p.clone())));
        }
    }
}

//! How the webview paints where there is no GPU (BENCHMARKS.md, "Desktop start-up").
//!
//! WebKitGTK composites the page with OpenGL. Without a GPU that OpenGL is Mesa's llvmpipe,
//! which compiles its shaders with LLVM right before the first frame: ~150 ms of the web
//! process's CPU on the way to "Connecting…". WebKit's non-composited mode paints the same page
//! on the CPU without GL. With WebKit off GL, GDK's GLX probe when GTK opens the display (it
//! loads llvmpipe and LLVM before the window can be made) serves nothing either.
//! Only without a GPU: with one, compositing runs on it, and WebKit keeps deciding.

use std::ffi::OsStr;
use std::path::Path;

/// The environment variables to set before GTK starts, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub set: Vec<(&'static str, &'static str)>,
    pub why: &'static str,
}

/// What to set, given the values of `WEBKIT_DISABLE_COMPOSITING_MODE` and `GDK_GL` as they are
/// and the DRM device directory (`/dev/dri`). Nothing when a render node (`renderD*`) exists or
/// `WEBKIT_DISABLE_COMPOSITING_MODE` is already set (even to "0": that is how to keep
/// compositing); a `GDK_GL` already set is kept.
pub fn without_gpu(
    webkit_disable_compositing_mode: Option<&OsStr>,
    gdk_gl: Option<&OsStr>,
    dri: &Path,
) -> Option<Plan> {
    if webkit_disable_compositing_mode.is_some() {
        return None;
    }
    let render_node = std::fs::read_dir(dri).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    });
    if render_node {
        return None;
    }
    let mut set = vec![("WEBKIT_DISABLE_COMPOSITING_MODE", "1")];
    if gdk_gl.is_none() {
        set.push(("GDK_GL", "disable"));
    }
    Some(Plan {
        set,
        why: "no GPU render node (renderD*): WebKit paints without OpenGL",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_render_node_webkit_and_gdk_go_without_gl() {
        let dri = tempfile::tempdir().unwrap();
        std::fs::write(dri.path().join("card0"), "").unwrap(); // a display device, no render node
        let plan = without_gpu(None, None, dri.path()).unwrap();
        assert_eq!(
            plan.set,
            vec![
                ("WEBKIT_DISABLE_COMPOSITING_MODE", "1"),
                ("GDK_GL", "disable")
            ]
        );
        // No /dev/dri at all (a container, a VM without a GPU): the same.
        let none = dri.path().join("missing");
        assert_eq!(without_gpu(None, None, &none), Some(plan));
    }

    #[test]
    fn a_render_node_leaves_the_gpu_to_webkit() {
        let dri = tempfile::tempdir().unwrap();
        std::fs::write(dri.path().join("renderD128"), "").unwrap();
        assert_eq!(without_gpu(None, None, dri.path()), None);
    }

    #[test]
    fn what_the_user_set_wins() {
        let dri = tempfile::tempdir().unwrap();
        // "0" keeps compositing (WebKit reads any other value as "disable"): nothing is touched.
        assert_eq!(without_gpu(Some(OsStr::new("0")), None, dri.path()), None);
        let plan = without_gpu(None, Some(OsStr::new("always")), dri.path()).unwrap();
        assert_eq!(plan.set, vec![("WEBKIT_DISABLE_COMPOSITING_MODE", "1")]);
    }
}

//! A small disk of the test's own: an ext4 file system in a file, mounted through a loop device.
//! It can be filled to the last byte and freed again (the chaos test's full-disk fault,
//! `tests/faults.rs`), and made to fail the way a dying disk does, then repaired
//! (`tests/faults.rs`).
//!
//! Needs root (mount). The image lives beside the mount point; [`Disk`]'s `Drop` unmounts it
//! lazily, so a panicking test leaves nothing mounted.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Disk {
    dir: PathBuf,
    img: PathBuf,
}

impl Disk {
    /// Makes a `size_mib` ext4 image next to `dir` and mounts it on `dir`.
    pub fn new(dir: &Path, size_mib: u32) -> Result<Disk, String> {
        let img = dir.with_extension("img");
        let f = std::fs::File::create(&img).map_err(|e| format!("{}: {e}", img.display()))?;
        f.set_len(u64::from(size_mib) << 20)
            .map_err(|e| format!("{}: {e}", img.display()))?;
        run("mkfs.ext4", &["-q", "-F", &img.display().to_string()])?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let disk = Disk {
            dir: dir.to_path_buf(),
            img,
        };
        disk.mount()?;
        Ok(disk)
    }

    fn mount(&self) -> Result<(), String> {
        run(
            "mount",
            &[
                "-o",
                "loop",
                &self.img.display().to_string(),
                &self.dir.display().to_string(),
            ],
        )
    }

    /// The disk fails: from now on every write gets EROFS, reads still work (ext4 aborts its
    /// journal and turns read-only under open files, as on I/O errors).
    pub fn abort(&self) -> Result<(), String> {
        run(
            "mount",
            &["-o", "remount,abort", &self.dir.display().to_string()],
        )
    }

    /// After [`Disk::abort`], once no process holds files on it: unmounts, repairs the journal
    /// and mounts it again.
    pub fn repair(&self) -> Result<(), String> {
        run("umount", &[&self.dir.display().to_string()])?;
        // Not `run`: e2fsck exits non-zero when it fixed something, which is the point here.
        let _ = Command::new("e2fsck")
            .arg("-fy")
            .arg(&self.img)
            .output()
            .map_err(|e| format!("e2fsck: {e}"))?;
        self.mount()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fills the file system to the last byte with `filler`; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.dir.join("filler");
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
        else {
            // Not even the file could be made: the disk is already full.
            return filler;
        };
        // Ever smaller chunks until not even 512 bytes fit; ext4 reserves the blocks at
        // write(), so ENOSPC comes then. A second round after the sync takes what the journal
        // gave back. (Syncing every small write instead takes seconds on a loaded machine.)
        for _ in 0..2 {
            for size in [1 << 20, 1 << 16, 4096, 512] {
                let chunk = vec![0u8; size];
                while f.write_all(&chunk).is_ok() {}
            }
            let _ = f.sync_all();
        }
        filler
    }

    /// Frees what [`Disk::fill`] took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.dir.join("filler"));
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_file(&self.img);
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

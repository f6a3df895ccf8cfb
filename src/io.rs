//! File output that never leaves a half-written file behind: everything agd writes
//! (checkpoints, images, reports) goes to a temporary sibling first and is renamed into
//! place, so a crash or a kill leaves either the old file or the new one.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary path beside `path`, unique within this process and across processes:
/// `.<name>.tmp-<pid>-<n>`, the pid telling [`remove_stale_temporaries`] whose it is.
///
/// The name is cut to 200 bytes first, so that a destination whose name is near the
/// file system's limit (255 bytes) still has a temporary sibling.
fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    name.truncate(cut);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`] but without the fsync: still all-or-nothing when the process
/// crashes or is killed (the rename is atomic), not across a power loss. For bulk output
/// that can be regenerated, such as thousands of synthetic images, where one disk sync
/// per file would cost more than producing the file.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = std::fs::write(&tmp, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot move {} into place", path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically unless `path` exists: the file appears whole, and
/// of two processes creating it at once exactly one does. Returns whether this call
/// created it.
pub fn create_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = temp_sibling(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    // A hard link, unlike a rename, never replaces its target.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Atomically writes whatever `fill` writes into the file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| -> Result<()> {
        // Errors name the destination: the temporary file is ours, not the user's.
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", path.display()))?;
        fill(&mut file).with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", path.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Encodes `img` as PNG and writes it atomically: the one PNG writer of contact sheets,
/// previews, rank lists and charts.
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    write_image(path, img, image::ImageFormat::Png)
}

/// Encodes `img` in `format` and writes it atomically.
pub fn write_image(path: &Path, img: &image::RgbImage, format: image::ImageFormat) -> Result<()> {
    let bytes =
        encode_image(img, format).with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// `img` encoded in `format`, in memory (for files that land together, e.g. a dreamed batch).
pub fn encode_image(img: &image::RgbImage, format: image::ImageFormat) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)?;
    Ok(bytes)
}

/// The pid in a [`temp_sibling`] name, if `name` is one.
fn temporary_owner(name: &str) -> Option<u32> {
    let (_, rest) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether `name` is a temporary file of [`write_atomic`] (a run's, or one a killed run left).
pub fn is_temporary(name: &str) -> bool {
    temporary_owner(name).is_some()
}

/// Whether process `pid` is running (Linux: `/proc/<pid>`; elsewhere assumed dead, which
/// is safe where it is used: under the folder's lock no other agd writes there).
fn is_running(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporary files in `dir` of processes that are gone: a run killed while
/// writing a checkpoint leaves a hidden 30–120 MB `.checkpoint.safetensors.tmp-*` that
/// nothing else would ever remove. Called by a run that has just claimed `dir`.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = temporary_owner(&name.to_string_lossy()) else {
            continue;
        };
        if pid != std::process::id() && !is_running(pid) {
            let path = entry.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove stale {}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Creates `dir` (and its parents), with an error that names it.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = u32::MAX - 1; // beyond any pid_max
        let stale = dir
            .path()
            .join(format!(".checkpoint.safetensors.tmp-{dead}-0"));
        let ours = temp_sibling(&dir.path().join("checkpoint.safetensors"));
        let kept = dir.path().join("checkpoint.safetensors");
        for p in [&stale, &ours, &kept] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(temporary_owner(".a.b.tmp-12-3"), Some(12));
        assert_eq!(temporary_owner("0001_c1_x.jpg"), None);
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert!(!stale.exists());
        assert!(ours.exists() && kept.exists());
    }

    #[test]
    fn failed_fill_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |_| anyhow::bail!("boom"));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

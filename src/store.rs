//! The only code that turns wire paths into filesystem paths, or installs,
//! removes and lists files. Everything else hands it a [`WirePath`].
//!
//! Guarantees: nothing outside the root is read or written (every existing
//! component is checked with `lstat`, and a symbolic link anywhere on the
//! way is refused); a file is written to a temporary file, synced, then
//! renamed over its final name and the folder synced, so the final name never
//! holds a partial file; the server's staging area is invisible and reserved.

use std::fs::{self, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::NamedTempFile;

use crate::protocol::{ErrorCode, ListEntry, Timestamp, WirePath};
use crate::walk::{Meta, Walk};

/// Name of the server's staging folder at the top of its root.
pub const STAGING_DIR: &str = ".xfer";

/// A refused or failed store operation, with the protocol code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub code: ErrorCode,
    pub message: String,
}

impl StoreError {
    fn new(code: ErrorCode, message: impl Into<String>) -> StoreError {
        StoreError { code, message: message.into() }
    }

    /// Classifies an I/O error on `what`.
    pub fn io(what: &dyn std::fmt::Display, e: io::Error) -> StoreError {
        let code = match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::NoSpace,
            io::ErrorKind::FileTooLarge => ErrorCode::TooLarge,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorCode::Denied,
            _ => ErrorCode::Io,
        };
        StoreError::new(code, format!("{what}: {e}"))
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// A folder that wire paths are resolved under.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
    /// Where temporary files go: the server's staging folder, or `None` for
    /// a hidden temporary file beside each target (client downloads).
    staging: Option<PathBuf>,
}

impl Root {
    /// A server root: created if missing, with its staging folder.
    pub fn open_server(dir: &Path) -> io::Result<Root> {
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let staging = dir.join(STAGING_DIR).join("tmp");
        fs::create_dir_all(&staging)?;
        clear_staging(&staging);
        Ok(Root { dir, staging: Some(staging) })
    }

    /// A local destination (`pull --out`): created if missing.
    pub fn open_local(dir: &Path) -> io::Result<Root> {
        fs::create_dir_all(dir)?;
        Ok(Root { dir: dir.canonicalize()?, staging: None })
    }

    /// The root folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finds an existing path without following any symbolic link.
    pub fn lookup(&self, p: &WirePath) -> Result<(PathBuf, Metadata)> {
        self.find(p, false)
    }

    /// Walks `p` with `lstat`; a link as the last component is returned
    /// (not followed) only when `final_link` allows it.
    fn find(&self, p: &WirePath, final_link: bool) -> Result<(PathBuf, Metadata)> {
        self.check_reserved(p)?;
        let last = p.components().count();
        let mut abs = self.dir.clone();
        let mut meta = fs::symlink_metadata(&abs).map_err(|e| StoreError::io(&"the root", e))?;
        for (i, c) in p.components().enumerate() {
            if i > 0 && !meta.is_dir() {
                return Err(StoreError::new(ErrorCode::NotFound, format!("{p}: not found (a parent is not a folder)")));
            }
            abs.push(c);
            meta = fs::symlink_metadata(&abs).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::new(ErrorCode::NotFound, format!("{p}: no such file or folder")),
                _ => StoreError::io(p, e),
            })?;
            if meta.file_type().is_symlink() && !(final_link && i + 1 == last) {
                return Err(StoreError::new(
                    ErrorCode::Denied,
                    format!("{p}: is or passes through a symbolic link, which xfer never follows"),
                ));
            }
        }
        Ok((abs, meta))
    }

    /// Creates a folder and its parents (like `mkdir -p`).
    pub fn mkdir(&self, p: &WirePath) -> Result<()> {
        if p.is_root() {
            return Err(StoreError::new(ErrorCode::BadPath, "the root folder itself cannot be created"));
        }
        self.check_reserved(p)?;
        self.make_dirs(p).map(drop)
    }

    /// Starts writing the file `p`: parents are created, the data goes to a
    /// temporary file until [`Staged::commit`].
    pub fn stage(&self, p: &WirePath) -> Result<Staged> {
        self.check_reserved(p)?;
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(StoreError::new(ErrorCode::BadPath, "cannot write a file over the root folder"));
        };
        let dir = self.make_dirs(&parent)?;
        let target = dir.join(name);
        if let Ok(m) = fs::symlink_metadata(&target) {
            if m.is_dir() {
                return Err(StoreError::new(ErrorCode::Conflict, format!("{p}: is a folder on the receiver")));
            }
        }
        let file = tempfile::Builder::new()
            .prefix(".xfer-")
            .suffix(".part")
            .tempfile_in(self.staging.as_deref().unwrap_or(&dir))
            .map_err(|e| StoreError::io(p, e))?;
        Ok(Staged { file, target, path: p.clone() })
    }

    /// Removes a file, or a folder and everything in it when `recursive`.
    pub fn remove(&self, p: &WirePath, recursive: bool) -> Result<()> {
        if p.is_root() {
            return Err(StoreError::new(ErrorCode::Denied, "refusing to remove the root folder"));
        }
        // A link itself may be removed; it is never followed.
        let (abs, meta) = self.find(p, true)?;
        let r = if meta.is_dir() {
            if !recursive {
                return Err(StoreError::new(
                    ErrorCode::Conflict,
                    format!("{p}: is a folder; pass -r to remove it and its contents"),
                ));
            }
            // remove_dir_all deletes symbolic links, it never follows them.
            fs::remove_dir_all(&abs)
        } else {
            fs::remove_file(&abs)
        };
        r.map_err(|e| StoreError::io(p, e))?;
        sync_dir(abs.parent().unwrap_or(&self.dir)).map_err(|e| StoreError::io(p, e))
    }

    /// The entries of a folder (sorted, staging hidden), or the file itself.
    pub fn list(&self, p: &WirePath) -> Result<Vec<ListEntry>> {
        let (abs, meta) = self.lookup(p)?;
        if !meta.is_dir() {
            return Ok(vec![entry(p.clone(), &meta)]);
        }
        let mut out = Vec::new();
        for e in fs::read_dir(&abs).map_err(|e| StoreError::io(p, e))? {
            let e = e.map_err(|e| StoreError::io(p, e))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if p.is_root() && self.staging.is_some() && name == STAGING_DIR {
                continue;
            }
            let Ok(rel) = p.join(&name) else { continue };
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            // Only what xfer would transfer is listed: files and folders.
            if m.is_file() || m.is_dir() {
                out.push(entry(rel, &m));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// A walk of `p` for sending, named from `p`'s last component (or, for
    /// the root, from the names at its top).
    pub fn walk(&self, p: &WirePath) -> Result<Walk> {
        let (abs, meta) = self.lookup(p)?;
        let rel = match p.file_name() {
            Some(n) => WirePath::root().join(n).expect("a component of a valid path"),
            None => WirePath::root(),
        };
        let hide = self.staging.as_ref().map(|_| STAGING_DIR);
        Walk::new(abs, rel, &meta, hide).map_err(|e| StoreError::io(p, e))
    }

    fn check_reserved(&self, p: &WirePath) -> Result<()> {
        if self.staging.is_some() && p.components().next() == Some(STAGING_DIR) {
            return Err(StoreError::new(
                ErrorCode::Denied,
                format!("{p}: '{STAGING_DIR}' is reserved for the server's staging area"),
            ));
        }
        Ok(())
    }

    /// Creates each missing component of `p`, refusing links and files on
    /// the way; returns the folder's absolute path.
    fn make_dirs(&self, p: &WirePath) -> Result<PathBuf> {
        let mut abs = self.dir.clone();
        for c in p.components() {
            abs.push(c);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => continue,
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(StoreError::new(
                        ErrorCode::Denied,
                        format!("{p}: passes through a symbolic link, which xfer never follows"),
                    ));
                }
                Ok(_) => {
                    return Err(StoreError::new(ErrorCode::Conflict, format!("{p}: '{c}' is a file, not a folder")));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&abs) {
                    Ok(()) => {}
                    // Another connection made it first: fine if it is a folder.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && abs.is_dir() && !abs.is_symlink() => {}
                    Err(e) => return Err(StoreError::io(p, e)),
                },
                Err(e) => return Err(StoreError::io(p, e)),
            }
        }
        Ok(abs)
    }
}

/// A file being received: a temporary file that becomes `target` on commit
/// and disappears if dropped first.
#[derive(Debug)]
pub struct Staged {
    file: NamedTempFile,
    target: PathBuf,
    path: WirePath,
}

impl Staged {
    /// Appends payload bytes.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(|e| StoreError::io(&self.path, e))
    }

    /// Applies mode and mtime, makes the data durable, renames it over the
    /// target and makes the rename durable.
    pub fn commit(self, mode: u32, mtime: Timestamp) -> Result<()> {
        let path = self.path.clone();
        let err = |e: io::Error| StoreError::io(&path, e);
        let f = self.file.as_file();
        // Keep the read and execute bits as sent; never group/other write,
        // setuid, setgid or sticky from a remote peer.
        f.set_permissions(fs::Permissions::from_mode(mode & 0o755)).map_err(err)?;
        f.set_modified(to_system_time(mtime)).map_err(err)?;
        f.sync_all().map_err(err)?;
        self.file.persist(&self.target).map_err(|e| err(e.error))?;
        sync_dir(self.target.parent().expect("target has a parent")).map_err(err)
    }
}

fn entry(path: WirePath, m: &Metadata) -> ListEntry {
    let meta = Meta::from(m);
    ListEntry { path, size: if m.is_dir() { 0 } else { m.len() }, mtime: meta.mtime, is_dir: m.is_dir() }
}

/// Converts a wire timestamp (which may predate 1970).
pub fn to_system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(t.nanos.into());
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Best effort: removes temporary files a crashed or killed server left
/// behind. Nothing else writes there while no server runs on this root.
fn clear_staging(staging: &Path) {
    let Ok(entries) = fs::read_dir(staging) else { return };
    for e in entries.flatten() {
        let _ = fs::remove_file(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn p(s: &str) -> WirePath {
        WirePath::parse(s).unwrap()
    }

    fn server() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        let root = Root::open_server(&t.path().join("root")).unwrap();
        (t, root)
    }

    #[test]
    fn staged_file_appears_only_on_commit_with_mode_and_mtime() {
        let (_t, root) = server();
        let mut s = root.stage(&p("a/b/c.txt")).unwrap();
        s.write_all(b"hello").unwrap();
        let target = root.dir().join("a/b/c.txt");
        assert!(!target.exists(), "nothing under the final name before commit");
        s.commit(0o4777, Timestamp { secs: 1_000_000_000, nanos: 5 }).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        let m = fs::metadata(&target).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!(m.mtime(), 1_000_000_000);
    }

    #[test]
    fn dropped_stage_leaves_old_version_and_no_temp_files() {
        let (_t, root) = server();
        fs::write(root.dir().join("f"), b"old").unwrap();
        let mut s = root.stage(&p("f")).unwrap();
        s.write_all(b"new but unfinished").unwrap();
        drop(s);
        assert_eq!(fs::read(root.dir().join("f")).unwrap(), b"old");
        assert_eq!(fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (t, root) = server();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, root.dir().join("esc")).unwrap();
        assert_eq!(root.stage(&p("esc/x")).unwrap_err().code, ErrorCode::Denied);
        assert_eq!(root.lookup(&p("esc/secret")).unwrap_err().code, ErrorCode::Denied);
        assert_eq!(root.mkdir(&p("esc/d")).unwrap_err().code, ErrorCode::Denied);
        assert!(root.walk(&p("esc")).is_err());
        root.remove(&p("esc"), true).unwrap();
        assert!(outside.join("secret").exists(), "removing a link never touches its target");
        assert!(!outside.join("x").exists() && !outside.join("d").exists());
    }

    #[test]
    fn staging_area_is_reserved_and_hidden() {
        let (_t, root) = server();
        fs::write(root.dir().join("visible"), b"v").unwrap();
        for op in
            [root.stage(&p(".xfer/tmp/x")).map(drop), root.mkdir(&p(".xfer/x")), root.lookup(&p(".xfer")).map(drop)]
        {
            assert_eq!(op.unwrap_err().code, ErrorCode::Denied);
        }
        let names: Vec<_> = root.list(&WirePath::root()).unwrap().into_iter().map(|e| e.path.to_string()).collect();
        assert_eq!(names, ["visible"]);
    }

    #[test]
    fn conflicts_and_missing_paths_are_reported() {
        let (_t, root) = server();
        fs::write(root.dir().join("file"), b"x").unwrap();
        fs::create_dir(root.dir().join("dir")).unwrap();
        assert_eq!(root.stage(&p("file/x")).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(root.stage(&p("dir")).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(root.stage(&WirePath::root()).unwrap_err().code, ErrorCode::BadPath);
        assert_eq!(root.lookup(&p("nope")).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(root.remove(&p("dir"), false).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(root.remove(&WirePath::root(), true).unwrap_err().code, ErrorCode::Denied);
        root.remove(&p("dir"), true).unwrap();
        root.remove(&p("file"), false).unwrap();
        assert!(root.list(&WirePath::root()).unwrap().is_empty());
    }

    #[test]
    fn local_roots_stage_beside_the_target() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::open_local(t.path()).unwrap();
        let s = root.stage(&p("d/f")).unwrap();
        let tmp: Vec<_> = fs::read_dir(t.path().join("d")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(tmp.len(), 1);
        assert!(tmp[0].to_string_lossy().starts_with(".xfer-"));
        s.commit(0o644, Timestamp::default()).unwrap();
        assert!(t.path().join("d/f").exists());
    }
}

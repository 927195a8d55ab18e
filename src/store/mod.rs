//! The only code that turns wire paths into files, or installs, removes and
//! lists them. Everything else hands it a [`WirePath`].
//!
//! Guarantees: nothing outside the root is read or written: every operation
//! walks the path one component at a time from an open handle on the root,
//! refusing symbolic links at each step ([`crate::beneath`]), so even a link
//! swapped in mid-transfer cannot redirect it. A file is written to a
//! temporary file, synced, renamed over its final name and the folder synced,
//! so the final name never holds a partial file. The server's staging area
//! is reserved and invisible.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::beneath::{DirFd, Entry, Kind};
use crate::direct;
use crate::hashes::{Hashes, Work};
use crate::partial::{self, Partial, PartialId};
use crate::progress::human_bytes;
use crate::protocol::{ErrorCode, ListEntry, Timestamp, WirePath};
use crate::walk::Walk;

mod group;
mod staged;

pub use group::{GroupSize, StageFn, Unwritten, Verified, commit_group};
pub use staged::{Near, Staged};

/// Name of the staging folder at the top of a root (a server's, or a pull's
/// destination): `tmp` for temporary files, `partial` for resumable ones.
pub const STAGING_DIR: &str = ".xfer";
const PARTIAL_DIR: &str = "partial";
/// Held (flock) in a pull's staging folder while the pull runs.
const LOCK_FILE: &str = "lock";

/// Whether a staged file may be kept for a later attempt to resume.
#[derive(Debug)]
pub enum Resume {
    /// An ordinary temporary file, deleted if the transfer fails.
    No,
    /// A new partial copy with this identity (see [`crate::partial`]).
    Fresh(PartialId),
    /// Continue a claimed partial copy after its last byte.
    From(Box<Partial>),
}

/// Bytes a receiver leaves free on its filesystem: 5% of it, at most 1 GiB,
/// so a sender (a hostile server, a runaway stream) can never fill a disk.
pub fn reserve(total: u64) -> u64 {
    (total / 20).min(1 << 30)
}

/// Free space on a receiver's filesystem, and how much of it may be used.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub free: u64,
    pub reserve: u64,
    /// `free` less `reserve`.
    pub usable: u64,
}

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
        let code = match rustix::io::Errno::from_io_error(&e) {
            // O_NOFOLLOW met a link where a folder or file was expected.
            Some(rustix::io::Errno::LOOP) => {
                return StoreError::new(
                    ErrorCode::Denied,
                    format!("{what}: passes through a symbolic link, which xfer never follows"),
                );
            }
            Some(rustix::io::Errno::NOTDIR) => {
                return StoreError::new(ErrorCode::Conflict, format!("{what}: a parent is a file, not a folder"));
            }
            _ => match e.kind() {
                io::ErrorKind::NotFound => ErrorCode::NotFound,
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorCode::NoSpace,
                io::ErrorKind::FileTooLarge => ErrorCode::TooLarge,
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorCode::Denied,
                _ => ErrorCode::Io,
            },
        };
        StoreError::new(code, format!("{what}: {e}"))
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// A folder that wire paths are resolved under, held open.
#[derive(Debug, Clone)]
pub struct Root {
    dir: DirFd,
    /// The root's canonical path, for messages only.
    path: PathBuf,
    /// Where temporary files go: the server's staging folder, or `None` for
    /// a pull's own folder under `OUT/.xfer/tmp`, or `None` for a hidden
    /// temporary file beside each target.
    staging: Option<DirFd>,
    /// A pull's own staging folder, locked while the pull runs and removed
    /// when the last handle on the root goes.
    pull_staging: Option<std::sync::Arc<PullStaging>>,
    /// Bytes of partial copies one sender may leave (see `partial`).
    partial_quota: u64,
    /// Hashes of files under the root, computed once per version.
    hashes: std::sync::Arc<Hashes>,
}

impl Root {
    /// The folder of partial copies, created when first needed.
    pub fn partial_dir(&self) -> io::Result<DirFd> {
        self.dir.descend([STAGING_DIR, PARTIAL_DIR], true)
    }

    /// Claims the partial copy of `id`, if one exists that nobody holds.
    pub fn claim_partial(&self, id: &PartialId, work: &Work) -> io::Result<Option<Partial>> {
        match self.dir.descend([STAGING_DIR, PARTIAL_DIR], false) {
            Ok(dir) => partial::claim(&dir, id, work),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The BLAKE3 of the regular file `p`, if it exists with exactly
    /// `size` bytes: remembered from an earlier call for the same version of
    /// the file, or read within `work`'s allowance (see [`crate::hashes`]).
    /// Blocking.
    pub fn hash_if_size(&self, p: &WirePath, size: u64, work: &Work) -> Option<[u8; 32]> {
        let found = self.find(p, false).ok()?;
        if found.entry.kind != Kind::File || found.entry.meta.size != size {
            return None;
        }
        let f = found.parent.open_file(OsStr::new(found.name.as_deref()?)).ok()?;
        self.hashes.of_file(&f, size, work)
    }
}

/// An existing entry: the folder that holds it, its name (`None` for the
/// root itself) and what it is.
struct Found {
    parent: DirFd,
    name: Option<String>,
    entry: Entry,
}

impl Root {
    /// A server root: created if missing, with its temporary files emptied
    /// of whatever a killed server left there (partial copies stay, for
    /// resume, until they expire).
    pub fn open_server(dir: &Path) -> io::Result<Root> {
        let mut root = Root::open_local(dir)?;
        let staging = root.dir.descend([STAGING_DIR, "tmp"], true)?;
        clear_staging(&staging);
        root.staging = Some(staging);
        root.partial_dir()?;
        Ok(root)
    }

    /// A local destination (`pull --out`): created if missing. Its top-level
    /// `.xfer` holds partial downloads and is never written by a server.
    pub fn open_local(dir: &Path) -> io::Result<Root> {
        fs::create_dir_all(dir)?;
        let path = dir.canonicalize()?;
        Ok(Root {
            dir: DirFd::open_path(&path)?,
            path,
            staging: None,
            pull_staging: None,
            partial_quota: partial::DEFAULT_QUOTA,
            hashes: Default::default(),
        })
    }

    /// A pull's destination: temporary files go to a folder of this pull's
    /// own under `OUT/.xfer/tmp`, locked while the pull runs, so that what a
    /// killed pull left behind is found and removed by the next one (and
    /// never litters the destination's folders).
    pub fn open_pull(dir: &Path) -> io::Result<Root> {
        let mut root = Root::open_local(dir)?;
        let tmp = root.dir.descend([STAGING_DIR, "tmp"], true)?;
        for name in tmp.names()? {
            // A folder whose lock nobody holds belongs to a pull that died.
            // (A pull takes its lock before the lock file gets its name, so
            // a lock file is never seen unlocked while its pull lives; a
            // folder with no lock file at all is dead once it is a minute
            // old.)
            let Ok(dir) = tmp.open_dir(&name) else { continue };
            let dead = match dir.open_locked(OsStr::new(LOCK_FILE), false) {
                Ok(Some(_unused)) => true,
                Ok(None) if dir.stat(OsStr::new(LOCK_FILE)).ok().flatten().is_none() => {
                    tmp.stat(&name).ok().flatten().is_some_and(|e| {
                        let age = SystemTime::now().duration_since(to_system_time(e.meta.mtime));
                        age.is_ok_and(|a| a > Duration::from_secs(60))
                    })
                }
                _ => false,
            };
            if dead {
                let _ = tmp.remove_tree(&name);
            }
        }
        let (own, name) = loop {
            let mut random = [0u8; 8];
            aws_lc_rs::rand::fill(&mut random).map_err(|_| io::Error::other("no system randomness"))?;
            let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
            match tmp.descend([name.as_str()], false) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => break (tmp.descend([name.as_str()], true)?, name),
                _ => continue,
            }
        };
        let (lock, tmp_name) = own.create_temp(".lock-")?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        own.rename(OsStr::new(&tmp_name), &own, OsStr::new(LOCK_FILE))?;
        root.staging = Some(own);
        root.pull_staging = Some(std::sync::Arc::new(PullStaging { top: root.dir.clone(), name, _lock: lock }));
        Ok(root)
    }

    /// Room for received data on the staging filesystem: its free space
    /// less [`reserve`], which a receiver never fills (partial copies kept
    /// there already count: they use free space). Blocking.
    pub fn room(&self) -> io::Result<Room> {
        let dir = self.staging.as_ref().unwrap_or(&self.dir);
        let (free, total) = (dir.free_space()?, dir.total_space()?);
        let reserve = reserve(total);
        Ok(Room { free, reserve, usable: free.saturating_sub(reserve) })
    }

    /// Sets how many bytes of partial copies one sender may leave.
    pub fn set_partial_quota(&mut self, quota: u64) {
        self.partial_quota = quota;
    }

    /// The root folder's path.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Finds an existing entry without following any symbolic link.
    fn find(&self, p: &WirePath, final_link: bool) -> Result<Found> {
        self.check_reserved(p)?;
        let components: Vec<&str> = p.components().collect();
        let Some((name, parents)) = components.split_last() else {
            let entry = self.dir.stat_self().map_err(|e| StoreError::io(p, e))?;
            return Ok(Found { parent: self.dir.clone(), name: None, entry });
        };
        let not_found = || StoreError::new(ErrorCode::NotFound, format!("{p}: no such file or folder"));
        let parent = match self.dir.descend(parents.iter().copied(), false) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(StoreError::io(p, e)),
        };
        let entry = parent.stat(OsStr::new(name)).map_err(|e| StoreError::io(p, e))?.ok_or_else(not_found)?;
        if entry.kind == Kind::Symlink && !final_link {
            return Err(StoreError::new(
                ErrorCode::Denied,
                format!("{p}: is a symbolic link, which xfer never follows"),
            ));
        }
        Ok(Found { parent, name: Some((*name).to_owned()), entry })
    }

    /// True when the first `n` components of `p` exist, as folders
    /// (no symbolic link followed).
    pub fn has_dirs(&self, p: &WirePath, n: usize) -> bool {
        self.dir.descend(p.components().take(n), false).is_ok()
    }

    /// Creates a folder and its parents (like `mkdir -p`).
    /// Returns the folder, for the caller to make its creation durable
    /// ([`commit_group`]) before saying it exists.
    pub fn mkdir(&self, p: &WirePath) -> Result<DirFd> {
        if p.is_root() {
            return Err(StoreError::new(ErrorCode::BadPath, "the root folder itself cannot be created"));
        }
        self.check_reserved(p)?;
        self.dir.descend(p.components(), true).map_err(|e| StoreError::io(p, e))
    }

    /// Starts writing the file `p`: parents are created, the data goes to a
    /// temporary file until [`Staged::commit`]. A `size` known in advance
    /// that exceeds the free space is refused before anything is written.
    /// `near`, from the previous file, lets files in the same folder share
    /// one open handle on it (fewer descriptors held by a group commit).
    /// With `resume`, the data goes to a partial copy kept if the transfer
    /// is cut (see [`crate::partial`]).
    pub fn stage(&self, p: &WirePath, size: Option<u64>, near: Option<Near>, resume: Resume) -> Result<Staged> {
        self.check_reserved(p)?;
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(StoreError::new(ErrorCode::BadPath, "cannot write a file over the root folder"));
        };
        let dir = match near {
            Some(n) if n.parent == parent => n.dir,
            _ => self.dir.descend(parent.components(), true).map_err(|e| StoreError::io(p, e))?,
        };
        if let Some(e) = dir.stat(OsStr::new(name)).map_err(|e| StoreError::io(p, e))? {
            if e.kind == Kind::Dir {
                return Err(StoreError::new(ErrorCode::Conflict, format!("{p}: is a folder on the receiver")));
            }
        }
        // Staged on the target's filesystem, or the rename into place fails
        // (a mount point below the root): beside the target then.
        let tmp_dir = match &self.staging {
            Some(s) if s.device().ok() == dir.device().ok() => s.clone(),
            _ => dir.clone(),
        };
        let held = match &resume {
            Resume::From(partial) => partial.offset,
            _ => 0,
        };
        if let (Some(size), Ok(free)) = (size, tmp_dir.free_space()) {
            if size - held.min(size) > free {
                let (mut need, mut have) = (human_bytes(size), human_bytes(free));
                if need == have {
                    (need, have) = (format!("{size} bytes"), format!("{free} bytes"));
                }
                return Err(StoreError::new(
                    ErrorCode::NoSpace,
                    format!("{p}: needs {need} but only {have} is free on the receiver"),
                ));
            }
        }
        let err = |e| StoreError::io(p, e);
        let mut staged = Staged {
            file: None,
            park_dir: tmp_dir.clone(),
            tmp_dir: tmp_dir.clone(),
            tmp_name: String::new(),
            dir,
            name: name.to_owned(),
            path: p.clone(),
            partial: false,
            written: held,
            io_mode: direct::Mode::default(),
            discarded: false,
            done: false,
            _staging: self.pull_staging.clone(),
        };
        let partial = match resume {
            Resume::No => None,
            Resume::Fresh(id) => self.fresh_partial(&id, &staged.dir).map_err(err)?,
            Resume::From(mut partial) => {
                // Anything past the offered prefix (a write in flight when
                // the last attempt died) goes.
                partial.file.set_len(partial.offset).map_err(err)?;
                partial.file.seek(io::SeekFrom::Start(partial.offset)).map_err(err)?;
                Some((partial.file, self.partial_dir().map_err(err)?, partial.id.data_name()))
            }
        };
        (staged.file, staged.tmp_dir, staged.tmp_name) = match partial {
            Some((file, dir, name)) => {
                staged.partial = true;
                (Some(file), dir, name)
            }
            None => {
                let (file, name) = tmp_dir.create_temp(".xfer-").map_err(err)?;
                (Some(file), tmp_dir, name)
            }
        };
        Ok(staged)
    }

    /// A new partial copy for `id`, unless another transfer holds one or the
    /// target is on another filesystem than the partial folder (it could
    /// not be renamed into place).
    fn fresh_partial(&self, id: &PartialId, target: &DirFd) -> io::Result<Option<(File, DirFd, String)>> {
        let dir = self.partial_dir()?;
        if dir.device()? != target.device()? {
            return Ok(None);
        }
        // What a sender's interrupted transfers leave is bounded: its
        // oldest copies go first, and past the quota none is kept.
        if !partial::make_room(&dir, &id.peer, id.size, self.partial_quota) {
            return Ok(None);
        }
        Ok(partial::create(&dir, id)?.map(|f| (f, dir, id.data_name())))
    }

    /// Removes a file (or link), or a folder and everything in it when
    /// `recursive`. Links are removed, never followed.
    pub fn remove(&self, p: &WirePath, recursive: bool) -> Result<()> {
        let found = self.find(p, true)?;
        let Some(name) = found.name else {
            return Err(StoreError::new(ErrorCode::Denied, "refusing to remove the root folder"));
        };
        let name = OsStr::new(&name);
        let r = if found.entry.kind == Kind::Dir {
            if !recursive {
                return Err(StoreError::new(
                    ErrorCode::Conflict,
                    format!("{p}: is a folder; pass -r to remove it and its contents"),
                ));
            }
            found.parent.remove_tree(name)
        } else {
            found.parent.unlink(name)
        };
        r.and_then(|()| found.parent.sync()).map_err(|e| StoreError::io(p, e))
    }

    /// The entries of a folder (sorted, staging hidden), or the file itself.
    /// Only what xfer would transfer is listed: files and folders.
    pub fn list(&self, p: &WirePath) -> Result<Vec<ListEntry>> {
        let found = self.find(p, false)?;
        let dir = match (found.entry.kind, &found.name) {
            (Kind::Dir, None) => self.dir.clone(),
            (Kind::Dir, Some(n)) => found.parent.open_dir(OsStr::new(n)).map_err(|e| StoreError::io(p, e))?,
            _ => return Ok(vec![list_entry(p.clone(), &found.entry)]),
        };
        let mut out = Vec::new();
        for name in dir.names().map_err(|e| StoreError::io(p, e))? {
            let Some(rel) = name.to_str().and_then(|n| p.join(n).ok()) else { continue };
            if self.check_reserved(&rel).is_err() {
                continue;
            }
            if let Ok(Some(e)) = dir.stat(&name) {
                if matches!(e.kind, Kind::File | Kind::Dir) {
                    out.push(list_entry(rel, &e));
                }
            }
        }
        Ok(out)
    }

    /// A walk of `p` for sending, named from `p`'s last component (or, for
    /// the root, from the names at its top).
    pub fn walk(&self, p: &WirePath) -> Result<Walk> {
        let found = self.find(p, false)?;
        let walk = match &found.name {
            None => Walk::contents(self.dir.clone(), Some(STAGING_DIR)),
            Some(n) => Walk::entry(&found.parent, OsStr::new(n), WirePath::root().join(n).expect("a valid component")),
        };
        walk.map_err(|e| StoreError::io(p, e))
    }

    /// Refuses paths in the staging area. Compared without case: on a
    /// case-insensitive filesystem `.XFER/partial` is the same folder.
    pub fn check_reserved(&self, p: &WirePath) -> Result<()> {
        if p.components().next().is_some_and(|c| c.eq_ignore_ascii_case(STAGING_DIR)) {
            return Err(StoreError::new(
                ErrorCode::Denied,
                format!("{p}: '{STAGING_DIR}' is reserved for xfer's staging area"),
            ));
        }
        Ok(())
    }
}

/// A pull's staging folder, `OUT/.xfer/tmp/NAME`: its lock file is held
/// (flock) while the pull runs, and it is removed when the pull ends, with
/// `.xfer` itself when nothing else (a partial copy worth resuming) is left.
#[derive(Debug)]
pub struct PullStaging {
    top: DirFd,
    name: String,
    _lock: File,
}

impl Drop for PullStaging {
    fn drop(&mut self) {
        // Each only if empty: partial copies stay for the next pull.
        let rmdir = |d: &DirFd, name: &str| {
            let _ = d.rmdir(OsStr::new(name));
        };
        if let Ok(tmp) = self.top.descend([STAGING_DIR, "tmp"], false) {
            let _ = tmp.remove_tree(OsStr::new(&self.name));
        }
        if let Ok(staging) = self.top.descend([STAGING_DIR], false) {
            rmdir(&staging, "tmp");
            rmdir(&staging, PARTIAL_DIR);
        }
        rmdir(&self.top, STAGING_DIR);
    }
}

fn list_entry(path: WirePath, e: &Entry) -> ListEntry {
    let is_dir = e.kind == Kind::Dir;
    ListEntry { path, size: if is_dir { 0 } else { e.meta.size }, mtime: e.meta.mtime, is_dir }
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

/// Best effort: removes temporary files a crashed or killed server left
/// behind. Nothing else writes there while no server runs on this root.
fn clear_staging(staging: &DirFd) {
    for name in staging.names().unwrap_or_default() {
        let _ = staging.unlink(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    impl Root {
        fn stage_any(&self, p: &WirePath) -> Result<Staged> {
            self.stage(p, None, None, Resume::No)
        }
    }

    #[test]
    fn a_file_larger_than_the_free_space_is_refused_up_front() {
        let (_t, root) = server();
        let e = root.stage(&p("huge"), Some(u64::MAX / 2), None, Resume::No).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSpace);
        assert!(
            e.message.contains("huge: needs 8388608.0 TiB but only") && e.message.contains("is free"),
            "{}",
            e.message
        );
        assert_eq!(fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
        let first = root.stage(&p("small"), Some(10), None, Resume::No).unwrap();
        // A file in the same folder shares the folder's handle.
        let second = root.stage(&p("other"), Some(10), Some(first.near()), Resume::No).unwrap();
        assert_eq!(first.near().parent, second.near().parent);
    }

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
        let mut s = root.stage_any(&p("a/b/c.txt")).unwrap();
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
        let mut s = root.stage_any(&p("f")).unwrap();
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
        assert_eq!(root.stage_any(&p("esc/x")).unwrap_err().code, ErrorCode::Denied);
        assert_eq!(root.list(&p("esc/secret")).unwrap_err().code, ErrorCode::Denied);
        assert_eq!(root.mkdir(&p("esc/d")).unwrap_err().code, ErrorCode::Denied);
        assert!(root.walk(&p("esc")).is_err());
        root.remove(&p("esc"), true).unwrap();
        assert!(outside.join("secret").exists(), "removing a link never touches its target");
        assert!(!outside.join("x").exists() && !outside.join("d").exists());
    }

    #[test]
    fn a_folder_swapped_for_a_link_mid_transfer_cannot_redirect_the_write() {
        let (t, root) = server();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut s = root.stage_any(&p("d/f")).unwrap();
        s.write_all(b"payload").unwrap();
        // Someone with write access to the root swaps the folder for a link.
        fs::rename(root.dir().join("d"), root.dir().join("d.old")).unwrap();
        std::os::unix::fs::symlink(&outside, root.dir().join("d")).unwrap();
        s.commit(0o644, Timestamp::default()).unwrap();
        assert!(!outside.join("f").exists(), "the write followed the link");
        assert_eq!(fs::read(root.dir().join("d.old/f")).unwrap(), b"payload");
        // And new requests through the link are refused.
        assert_eq!(root.stage_any(&p("d/g")).unwrap_err().code, ErrorCode::Denied);
    }

    #[test]
    fn a_group_commit_installs_every_file_in_order_and_leaves_no_temp_files() {
        let (_t, root) = server();
        let mut s = root.stage_any(&p("a/1")).unwrap();
        s.write_all(b"one").unwrap();
        s.prepare(0o644, Timestamp::default()).unwrap();
        let mut group = vec![Verified::Staged(s)];
        // Small files still in memory: the commit stages and writes them,
        // and one that cannot be staged ("a" is a folder) fails alone.
        for (name, data) in [("b/2", "two"), ("a", "not a folder"), ("a/1", "one, again")] {
            let (r, path) = (root.clone(), p(name));
            let stage: StageFn = Box::new(move |near| r.stage(&path, Some(data.len() as u64), near, Resume::No));
            group.push(Verified::Unwritten(Unwritten {
                path: p(name),
                stage,
                data: data.into(),
                mode: 0o600,
                mtime: Timestamp::default(),
            }));
        }
        assert!(!root.dir().join("a/1").exists(), "nothing is installed before the commit");
        let (results, _) = commit_group(group, &[]);
        assert_eq!(results.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(), ["a/1", "b/2", "a", "a/1"]);
        let failed: Vec<bool> = results.iter().map(|(_, r)| r.is_err()).collect();
        assert_eq!(failed, [false, false, true, false], "{results:?}");
        assert_eq!(results[2].1.as_ref().unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(fs::read(root.dir().join("a/1")).unwrap(), b"one, again", "the later file wins");
        assert_eq!(fs::read(root.dir().join("b/2")).unwrap(), b"two");
        let mode = fs::metadata(root.dir().join("b/2")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an unwritten file gets its mode when the commit writes it");
        assert_eq!(fs::read_dir(root.dir().join(".xfer/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn staging_area_is_reserved_and_hidden() {
        let (_t, root) = server();
        fs::write(root.dir().join("visible"), b"v").unwrap();
        for op in [
            root.stage_any(&p(".xfer/tmp/x")).map(drop),
            root.mkdir(&p(".xfer/x")).map(drop),
            root.list(&p(".xfer")).map(drop),
        ] {
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
        assert_eq!(root.stage_any(&p("file/x")).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(root.stage_any(&p("dir")).unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(root.stage_any(&WirePath::root()).unwrap_err().code, ErrorCode::BadPath);
        assert_eq!(root.list(&p("nope")).unwrap_err().code, ErrorCode::NotFound);
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
        let s = root.stage_any(&p("d/f")).unwrap();
        let tmp: Vec<_> = fs::read_dir(t.path().join("d")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(tmp.len(), 1);
        assert!(tmp[0].to_string_lossy().starts_with(".xfer-"));
        s.commit(0o644, Timestamp::default()).unwrap();
        assert!(t.path().join("d/f").exists());
    }
}

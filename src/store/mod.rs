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

mod case;
mod group;
mod pull;
mod staged;

pub use case::CaseNames;
pub use group::{GroupSize, StageFn, Unwritten, Verified, commit_group};
pub use pull::PullStaging;
pub use staged::{Near, Staged};

/// Name of the staging folder at the top of a root (a server's, or a pull's
/// destination): `tmp` for temporary files, `partial` for resumable ones.
pub const STAGING_DIR: &str = ".xfer";

/// Symbolic links found in a folder, with their targets.
pub type Links = Vec<(WirePath, String)>;
const PARTIAL_DIR: &str = "partial";

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
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> StoreError {
        StoreError { code, message: message.into() }
    }

    /// Classifies an I/O error on `what`.
    pub fn io(what: &dyn std::fmt::Display, e: io::Error) -> StoreError {
        // A link met where a folder or file was expected.
        if crate::beneath::is_link(&e) {
            return StoreError::new(
                ErrorCode::Denied,
                format!("{what}: passes through a symbolic link, which xfer never follows"),
            );
        }
        if e.kind() == io::ErrorKind::NotADirectory {
            return StoreError::new(ErrorCode::Conflict, format!("{what}: a parent is a file, not a folder"));
        }
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
    /// Whether its filesystem folds case (probed when opened).
    folds_case: bool,
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
        let dir = DirFd::open_path(&path)?;
        Ok(Root {
            folds_case: case::folds_case(&dir),
            dir,
            path,
            staging: None,
            pull_staging: None,
            partial_quota: partial::DEFAULT_QUOTA,
            hashes: Default::default(),
        })
    }

    /// A record of one transfer's paths, refusing names that differ only
    /// by case where this root's filesystem would take them for one.
    pub fn case_names(&self) -> CaseNames {
        CaseNames::new(self.folds_case)
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

    /// Makes `p` a symbolic link to `target` (parents are created; a file
    /// or link there is replaced, atomically; a folder is not). The target
    /// must lead inside the root, and not into the staging area, read as
    /// text: nothing here or anywhere in xfer follows the link.
    pub fn link(&self, p: &WirePath, target: &str) -> Result<()> {
        self.check_reserved(p)?;
        crate::links::acceptable(&WirePath::root(), p, target, Some(STAGING_DIR))
            .map_err(|m| StoreError::new(ErrorCode::BadPath, m))?;
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(StoreError::new(ErrorCode::BadPath, "the root folder cannot be a link"));
        };
        let dir = self.dir.descend(parent.components(), true).map_err(|e| StoreError::io(p, e))?;
        if let Some(e) = dir.stat(OsStr::new(name)).map_err(|e| StoreError::io(p, e))?
            && e.kind == Kind::Dir
        {
            return Err(StoreError::new(ErrorCode::Conflict, format!("{p}: is a folder on the receiver")));
        }
        dir.make_link(target, OsStr::new(name)).map_err(|e| StoreError::io(p, e))?;
        dir.sync().map_err(|e| StoreError::io(p, e))
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
        if let Some(e) = dir.stat(OsStr::new(name)).map_err(|e| StoreError::io(p, e))?
            && e.kind == Kind::Dir
        {
            return Err(StoreError::new(ErrorCode::Conflict, format!("{p}: is a folder on the receiver")));
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
        if let (Some(size), Ok(free)) = (size, tmp_dir.free_space())
            && size - held.min(size) > free
        {
            let (mut need, mut have) = (human_bytes(size), human_bytes(free));
            if need == have {
                (need, have) = (format!("{size} bytes"), format!("{free} bytes"));
            }
            return Err(StoreError::new(
                ErrorCode::NoSpace,
                format!("{p}: needs {need} but only {have} is free on the receiver"),
            ));
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
        self.list_with_links(p).map(|(entries, _)| entries)
    }

    /// [`Root::list`], and the symbolic links in the folder with their
    /// targets (those xfer can carry: see [`crate::links::check_target`]),
    /// read, never followed.
    pub fn list_with_links(&self, p: &WirePath) -> Result<(Vec<ListEntry>, Links)> {
        let found = self.find(p, false)?;
        let dir = match (found.entry.kind, &found.name) {
            (Kind::Dir, None) => self.dir.clone(),
            (Kind::Dir, Some(n)) => found.parent.open_dir(OsStr::new(n)).map_err(|e| StoreError::io(p, e))?,
            _ => return Ok((vec![list_entry(p.clone(), &found.entry)], Vec::new())),
        };
        let (mut out, mut links) = (Vec::new(), Vec::new());
        for name in dir.names().map_err(|e| StoreError::io(p, e))? {
            let Some(rel) = name.to_str().and_then(|n| p.join(n).ok()) else { continue };
            if self.check_reserved(&rel).is_err() {
                continue;
            }
            match dir.stat(&name) {
                Ok(Some(e)) if matches!(e.kind, Kind::File | Kind::Dir) => out.push(list_entry(rel, &e)),
                Ok(Some(e)) if e.kind == Kind::Symlink => {
                    let target = dir.read_link(&name).ok().and_then(|t| t.into_string().ok());
                    if let Some(t) = target.filter(|t| crate::links::check_target(t).is_ok()) {
                        links.push((rel, t));
                    }
                }
                _ => {}
            }
        }
        Ok((out, links))
    }

    /// A walk of `p` for sending, named from `p`'s last component (or, for
    /// the root, from the names at its top).
    pub fn walk(&self, p: &WirePath) -> Result<Walk> {
        let found = self.find(p, false)?;
        let walk = match &found.name {
            None => Walk::contents(self.dir.clone(), Some(STAGING_DIR)),
            // Links inside the root are sent as links; the client decides
            // whether they stay in what it asked for.
            Some(n) => Walk::entry_in(
                &found.parent,
                OsStr::new(n),
                WirePath::root().join(n).expect("a valid component"),
                WirePath::root(),
            ),
        };
        walk.map_err(|e| StoreError::io(p, e))
    }

    /// Refuses paths in the staging area (compared without case: on a
    /// case-insensitive filesystem `.XFER/partial` is the same folder), and
    /// on Windows names its filesystems cannot hold.
    pub fn check_reserved(&self, p: &WirePath) -> Result<()> {
        if p.components().next().is_some_and(|c| c.eq_ignore_ascii_case(STAGING_DIR)) {
            return Err(StoreError::new(
                ErrorCode::Denied,
                format!("{p}: '{STAGING_DIR}' is reserved for xfer's staging area"),
            ));
        }
        // A name this filesystem would change or refuse: said now, before
        // anything is written under another name.
        if crate::names::WINDOWS
            && let Some(why) = crate::names::windows_path_refusal(p)
        {
            return Err(StoreError::new(ErrorCode::BadPath, why));
        }
        Ok(())
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
mod tests;

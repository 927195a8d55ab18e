//! Group commit: verified files (staged, or small ones still in memory)
//! made durable and installed together, with one filesystem sync before the
//! renames and one after, instead of two `fsync`s per file.

use super::{Near, Result, Staged, StoreError};
use crate::beneath::{DirFd, SYNCS_FILESYSTEM};
use crate::protocol::{Timestamp, WirePath};

/// A group is committed at the latest when it holds this many files, this
/// many files already staged (each holds its folder open), this many
/// payload bytes, or this many bytes of small files still in memory: the
/// last two bound a connection's memory, the second its descriptors.
const GROUP_FILES: usize = 1024;
const GROUP_STAGED: usize = 128;
const GROUP_BYTES: u64 = 64 << 20;
const GROUP_MEMORY: usize = 4 << 20;

/// What a group of verified files waiting for their commit holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupSize {
    files: usize,
    staged: usize,
    bytes: u64,
    memory: usize,
}

impl GroupSize {
    /// Counts one more file, with `bytes` of payload.
    pub fn add(&mut self, f: &Verified, bytes: u64) {
        self.files += 1;
        self.staged += usize::from(matches!(f, Verified::Staged(_)));
        self.bytes += bytes;
        self.memory += f.in_memory();
    }

    /// Counts a folder created for the group.
    pub fn add_folder(&mut self) {
        self.files += 1;
    }

    /// True when the group should be committed now.
    pub fn full(&self) -> bool {
        self.files >= GROUP_FILES
            || self.staged >= GROUP_STAGED
            || self.bytes >= GROUP_BYTES
            || self.memory >= GROUP_MEMORY
    }
}

/// Stages a file, given the folder handle of the file staged before it
/// (when there is one) to share.
pub type StageFn = Box<dyn FnOnce(Option<Near>) -> Result<Staged> + Send>;

/// A received, verified file waiting for its group commit.
pub enum Verified {
    /// Written, prepared (mode and mtime) and closed.
    Staged(Staged),
    /// A small file still in memory: the group commit stages, writes and
    /// prepares it itself, so a group of small files costs one blocking
    /// call instead of one or more per file.
    Unwritten(Unwritten),
}

/// A small verified file's content and what its installed copy gets.
pub struct Unwritten {
    pub path: WirePath,
    pub stage: StageFn,
    pub data: Vec<u8>,
    pub mode: u32,
    pub mtime: Timestamp,
}

impl Verified {
    pub fn path(&self) -> &WirePath {
        match self {
            Verified::Staged(s) => &s.path,
            Verified::Unwritten(u) => &u.path,
        }
    }

    /// Bytes of memory this file holds.
    pub fn in_memory(&self) -> usize {
        match self {
            Verified::Staged(_) => 0,
            Verified::Unwritten(u) => u.data.capacity(),
        }
    }

    /// The folder handle to share with the next file, when already open.
    pub fn near(&self) -> Option<Near> {
        match self {
            Verified::Staged(s) => Some(s.near()),
            Verified::Unwritten(_) => None,
        }
    }

    /// Writes a file still in memory to its staged, prepared, closed copy
    /// now, so it waits for the group commit holding no memory.
    pub fn write_out(self) -> Result<Verified> {
        self.into_staged(None).map(Verified::Staged)
    }

    /// Writes an unwritten file to a staged, prepared, closed one.
    fn into_staged(self, near: Option<Near>) -> Result<Staged> {
        match self {
            Verified::Staged(s) => Ok(s),
            Verified::Unwritten(u) => {
                let mut staged = (u.stage)(near)?;
                staged.write_all(&u.data)?;
                staged.prepare(u.mode, u.mtime)?;
                staged.close();
                Ok(staged)
            }
        }
    }
}

/// Group commit: writes the small files still in memory, then makes every
/// file durable and installs them with one filesystem sync before the
/// renames and one after, instead of two `fsync`s per file. Returns each
/// file's outcome, in order; a file whose outcome is an error was not
/// installed, or its install may not be durable. `folders` created since
/// the last group are made durable by the same syncs; the second value says
/// whether they are.
pub fn commit_group(files: Vec<Verified>, folders: &[DirFd]) -> (Vec<(WirePath, Result<()>)>, Result<()>) {
    let mut near = None;
    let mut out = Vec::with_capacity(files.len());
    let mut staged = Vec::with_capacity(files.len());
    for f in files {
        let path = f.path().clone();
        match f.into_staged(near.take()) {
            Ok(s) => {
                near = Some(s.near());
                staged.push(s);
                out.push((path, Ok(())));
            }
            Err(e) => out.push((path, Err(e))),
        }
    }
    let (installed, folders_ok) = install_durably(staged, folders);
    let mut installed = installed.into_iter();
    for o in out.iter_mut().filter(|o| o.1.is_ok()) {
        o.1 = installed.next().expect("one result per staged file").1;
    }
    (out, folders_ok)
}

/// Syncs, renames and syncs again. Every filesystem involved is synced (a
/// folder of the destination may be another mount). Without `syncfs`
/// (the portable build) each file was synced when it was prepared, and
/// after the renames each folder involved is synced instead.
fn install_durably(files: Vec<Staged>, folders: &[DirFd]) -> (Vec<(WirePath, Result<()>)>, Result<()>) {
    let mut filesystems: Vec<(u64, DirFd)> = Vec::new();
    for dir in files.iter().flat_map(|f| [&f.tmp_dir, &f.dir]).chain(folders) {
        // Folders are synced one by one without syncfs: the targets' only,
        // as a temporary name that comes back after a crash in the staging
        // folder is cleared when the server starts.
        if !SYNCS_FILESYSTEM
            && files.iter().any(|f| f.tmp_dir.same_handle(dir))
            && !files.iter().any(|f| f.dir.same_handle(dir))
        {
            continue;
        }
        if !SYNCS_FILESYSTEM {
            if !filesystems.iter().any(|(_, d)| d.same_handle(dir)) {
                filesystems.push((0, dir.clone()));
            }
        } else if let Ok(dev) = dir.device()
            && !filesystems.iter().any(|(d, _)| *d == dev)
        {
            filesystems.push((dev, dir.clone()));
        }
    }
    let sync = || -> Result<()> {
        filesystems
            .iter()
            .try_for_each(|(_, d)| if SYNCS_FILESYSTEM { d.sync_filesystem() } else { d.sync() })
            .map_err(|e| StoreError::io(&"syncing the received files", e))
    };
    // Without syncfs the files are already durable; the folders' syncs
    // come after the renames.
    let synced = if SYNCS_FILESYSTEM { sync() } else { Ok(()) };
    let mut out: Vec<(WirePath, Result<()>)> = files
        .into_iter()
        .map(|f| {
            let path = f.path.clone();
            let r = match &synced {
                Ok(()) => f.install(),
                Err(e) => Err(e.clone()), // dropping `f` deletes the temporary file
            };
            (path, r)
        })
        .collect();
    if out.iter().any(|o| o.1.is_ok())
        && let Err(e) = sync()
    {
        for o in out.iter_mut().filter(|o| o.1.is_ok()) {
            o.1 = Err(e.clone());
        }
    }
    (out, synced)
}

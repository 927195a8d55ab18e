//! A file being received: its temporary (or partial) copy, written with
//! direct I/O where possible, prepared (mode, mtime), and renamed into
//! place by the group commit; deleted if dropped first.

use std::ffi::OsStr;
use std::fs::File;
use std::io;

use super::{Result, StoreError, to_system_time};
use crate::beneath::DirFd;
use crate::direct;
use crate::partial;
use crate::protocol::{ErrorCode, Timestamp, WirePath};

/// An open folder and its path, shared by files staged in the same folder.
#[derive(Debug, Clone)]
pub struct Near {
    pub(super) parent: WirePath,
    pub(super) dir: DirFd,
}

/// A file being received: a temporary file that becomes `name` in `dir` on
/// commit, and is deleted if dropped first.
#[derive(Debug)]
pub struct Staged {
    /// Open while being written; closed once prepared for a group commit,
    /// so a group of many files does not hold many descriptors.
    pub(super) file: Option<File>,
    /// Where ordinary temporary files go (a verified partial copy moves
    /// there, out of reach of other transfers, before it is closed).
    pub(super) park_dir: DirFd,
    pub(super) tmp_dir: DirFd,
    pub(super) tmp_name: String,
    pub(super) dir: DirFd,
    pub(super) name: String,
    pub(super) path: WirePath,
    /// The temporary file is a partial copy, kept if dropped unfinished.
    pub(super) partial: bool,
    /// Bytes in the file (a resumed prefix included).
    pub(super) written: u64,
    /// Whether writes currently bypass the page cache.
    pub(super) io_mode: direct::Mode,
    /// Failed for good: delete even a partial copy.
    pub(super) discarded: bool,
    pub(super) done: bool,
    /// A pull's staging folder, kept until its last file is gone: a file
    /// dropped on a writer thread after the pull ended must still find it,
    /// and the folder's own clean-up must come after the file's.
    pub(super) _staging: Option<std::sync::Arc<super::PullStaging>>,
}

impl Staged {
    /// Appends payload bytes: aligned blocks with direct I/O where the
    /// file system allows it, the rest through the page cache.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let (pos, mut mode) = (self.written, self.io_mode);
        let r = direct::append(self.open_file()?, pos, data, &mut mode);
        self.io_mode = mode;
        r.map_err(|e| StoreError::io(&self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Gives up on the file for good: even a partial copy is deleted (the
    /// sender abandoned it, or it failed verification).
    pub fn discard(mut self) {
        self.discarded = true;
    }

    fn open_file(&mut self) -> Result<&mut File> {
        let path = &self.path;
        self.file.as_mut().ok_or_else(|| StoreError::new(ErrorCode::Io, format!("{path}: written after it was closed")))
    }

    /// Closes the file (its data stays staged); for files waiting on a
    /// group commit.
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Applies mode and mtime, makes the data durable, renames it over the
    /// target and makes the rename durable.
    pub fn commit(mut self, mode: u32, mtime: Timestamp) -> Result<()> {
        self.prepare(mode, mtime)?;
        let path = self.path.clone();
        if crate::beneath::SYNCS_FILESYSTEM {
            // (Without syncfs, prepare synced it already.)
            self.open_file()?.sync_all().map_err(|e| StoreError::io(&path, e))?;
        }
        let dir = self.dir.clone();
        let path = self.path.clone();
        self.install()?;
        dir.sync().map_err(|e| StoreError::io(&path, e))
    }

    /// Applies mode and mtime (the last writes to the file's metadata).
    pub fn prepare(&mut self, mode: u32, mtime: Timestamp) -> Result<()> {
        let path = self.path.clone();
        let err = |e: io::Error| StoreError::io(&path, e);
        let file = self.open_file()?;
        // Keep the read and execute bits as sent; never group/other write,
        // setuid, setgid or sticky from a remote peer.
        crate::platform::set_mode(file, mode & 0o755).map_err(err)?;
        file.set_modified(to_system_time(mtime)).map_err(err)?;
        if !crate::beneath::SYNCS_FILESYSTEM {
            // No syncfs for the group commit to make it durable with.
            file.sync_all().map_err(err)?;
        }
        self.park()
    }

    /// Moves a verified partial copy out of the partial folder while still
    /// holding its lock, so no other transfer can claim and truncate it
    /// between now and its rename into place.
    fn park(&mut self) -> Result<()> {
        if !self.partial {
            return Ok(());
        }
        let err = |e| StoreError::io(&self.path, e);
        let (_, name) = self.park_dir.create_temp(".xfer-").map_err(err)?;
        // The description goes first, while the data is still in place and
        // locked (so nobody can start a new partial copy under this name);
        // once the data is renamed away, the name belongs to whoever comes
        // next, and nothing of theirs may be removed.
        partial::remove_description(&self.tmp_dir, &self.tmp_name);
        self.tmp_dir.rename(OsStr::new(&self.tmp_name), &self.park_dir, OsStr::new(&name)).map_err(err)?;
        (self.tmp_dir, self.tmp_name, self.partial) = (self.park_dir.clone(), name, false);
        Ok(())
    }

    /// Renames the file over its target. Durable only once the caller has
    /// synced the data before and the folder (or filesystem) after: group
    /// commit does both once for many files.
    pub fn install(mut self) -> Result<()> {
        let r = self.tmp_dir.rename(OsStr::new(&self.tmp_name), &self.dir, OsStr::new(&self.name));
        r.map_err(|e| StoreError::io(&self.path, e))?;
        self.done = true;
        Ok(())
    }

    /// The path this file will have.
    pub fn path(&self) -> &WirePath {
        &self.path
    }

    /// Its folder, for staging the next file of the same folder.
    pub fn near(&self) -> Near {
        Near { parent: self.path.parent().unwrap_or_default(), dir: self.dir.clone() }
    }
}

impl Drop for Staged {
    /// An unfinished file is deleted, unless it is a partial copy with data
    /// that nobody discarded: that one stays for the next attempt.
    fn drop(&mut self) {
        if self.done || (self.partial && self.written > 0 && !self.discarded) {
            return;
        }
        if self.partial {
            partial::remove(&self.tmp_dir, &self.tmp_name);
        } else {
            let _ = self.tmp_dir.unlink(OsStr::new(&self.tmp_name));
        }
    }
}

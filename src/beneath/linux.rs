//! The Linux implementation: `openat` with `O_NOFOLLOW` on every component,
//! `fstatvfs` for room, `syncfs` for group commit.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::{Entry, Kind, link_refused};
use crate::protocol::Timestamp;
use crate::walk::Meta;

/// `syncfs` makes a whole group of files durable with one call.
pub const SYNCS_FILESYSTEM: bool = true;

/// An open directory; cheap to clone (the descriptor is shared).
#[derive(Debug, Clone)]
pub struct DirFd(Arc<OwnedFd>);

const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::RDONLY).union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW);

impl DirFd {
    /// Opens a directory by path, from the process's point of view. Used only
    /// for paths the local user chose (a root, `--out`, a source's parent).
    pub fn open_path(path: &Path) -> io::Result<DirFd> {
        let fd = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(DirFd(Arc::new(fd)))
    }

    /// Opens the child folder `name`; a link there is refused with `ELOOP`
    /// (and a file with `ENOTDIR`).
    pub fn open_dir(&self, name: &OsStr) -> io::Result<DirFd> {
        match rustix::fs::openat(&*self.0, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(DirFd(Arc::new(fd))),
            // With O_DIRECTORY, Linux reports a link as "not a directory";
            // look again only to say which it was.
            Err(rustix::io::Errno::NOTDIR) if matches!(self.stat(name), Ok(Some(e)) if e.kind == Kind::Symlink) => {
                Err(link_refused())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the folder `name` (0755 less the umask); false when
    /// something is already there.
    pub fn make_dir(&self, name: &str) -> io::Result<bool> {
        match rustix::fs::mkdirat(&*self.0, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Describes `name` without following it; `None` when it does not exist.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Entry>> {
        match rustix::fs::statat(&*self.0, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(entry(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Describes this folder itself.
    pub fn stat_self(&self) -> io::Result<Entry> {
        Ok(entry(&rustix::fs::fstat(&*self.0)?))
    }

    /// Opens the regular file `name` for reading; a link, or anything but
    /// a regular file (a FIFO or device swapped in after `name` was
    /// checked), is refused. `O_NONBLOCK` keeps the open itself from
    /// waiting forever on a FIFO with no writer; the check is made on the
    /// opened handle, so no swap can come between check and use.
    pub fn open_file(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        let fd = rustix::fs::openat(&*self.0, name, flags, Mode::empty())?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(super::not_regular());
        }
        // Regular files ignore O_NONBLOCK; cleared all the same, so reads
        // behave as everywhere else.
        rustix::fs::fcntl_setfl(&fd, rustix::fs::fcntl_getfl(&fd)? - OFlags::NONBLOCK)?;
        Ok(File::from(fd))
    }

    /// Creates the new, private (0600) file `name` for writing; fails with
    /// `AlreadyExists` if anything (a link included) is there.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        Ok(File::from(rustix::fs::openat(&*self.0, name, flags, Mode::from_raw_mode(0o600))?))
    }

    /// Opens (or, with `create`, creates) the regular file `name` for
    /// reading and writing, never through a link; `Ok(None)` when it does
    /// not exist and `create` is off. The caller locks it.
    pub fn open_rw(&self, name: &OsStr, create: bool) -> io::Result<Option<File>> {
        let mut flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if create {
            flags |= OFlags::CREATE;
        }
        match rustix::fs::openat(&*self.0, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::NOENT) if !create => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` here to `to` in `to_dir`, atomically replacing it.
    pub fn rename(&self, from: &OsStr, to_dir: &DirFd, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&*self.0, from, &*to_dir.0, to)?)
    }

    /// The target of the link `name`, as written (never followed).
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        let target = rustix::fs::readlinkat(&*self.0, name, Vec::new())?;
        Ok(OsStr::from_bytes(target.as_bytes()).to_owned())
    }

    /// Makes the new link `name` pointing at `target`.
    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &*self.0, name)?)
    }

    /// Removes the file (or link) `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&*self.0, name, AtFlags::empty())?)
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&*self.0, name, AtFlags::REMOVEDIR)?)
    }

    /// The names in this folder, sorted, without `.` and `..`.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&*self.0)? {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Bytes an unprivileged user may still write on this folder's
    /// filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        let st = rustix::fs::fstatvfs(&*self.0)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// The size of this folder's filesystem, in bytes.
    pub fn total_space(&self) -> io::Result<u64> {
        let st = rustix::fs::fstatvfs(&*self.0)?;
        Ok(st.f_blocks.saturating_mul(st.f_frsize))
    }

    /// The device (filesystem) this folder is on.
    pub fn device(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&*self.0)?.st_dev)
    }

    /// Makes every pending write on this folder's filesystem durable.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&*self.0)?)
    }

    /// Makes renames and removals in this folder durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&*self.0)?)
    }

    /// Whether both are clones of one open handle.
    pub fn same_handle(&self, other: &DirFd) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Makes a FIFO, for tests of what a walk or an open refuses.
    #[cfg(test)]
    pub fn make_fifo(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::mkfifoat(&*self.0, name, Mode::from_raw_mode(0o600))?)
    }
}

fn entry(st: &Stat) -> Entry {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    let meta = Meta {
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        mtime: Timestamp { secs: st.st_mtime, nanos: (st.st_mtime_nsec as u32).min(999_999_999) },
    };
    Entry { kind, meta }
}

//! Race-free filesystem access beneath a directory handle.
//!
//! Checking a path with `lstat` and then using it by name leaves a window in
//! which someone with write access to the tree could swap a folder for a
//! symbolic link. Here every operation is relative to an open directory
//! ([`DirFd`]) and every component is opened with `O_NOFOLLOW`: a symbolic
//! link anywhere, there from the start or swapped in mid-operation, makes
//! the operation fail (`ELOOP`/`ENOTDIR`) instead of being followed. `store`
//! and `walk` build on this; nothing here knows about wire paths.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::protocol::Timestamp;
use crate::walk::Meta;

/// An open directory; cheap to clone (the descriptor is shared).
#[derive(Debug, Clone)]
pub struct DirFd(Arc<OwnedFd>);

/// What `stat` says about one entry, without following links.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub kind: Kind,
    pub meta: Meta,
}

/// The kinds of entry xfer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

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
                Err(rustix::io::Errno::LOOP.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the folder reached by `components`, creating missing ones
    /// when `create` is set (like `mkdir -p`). Every step refuses links.
    pub fn descend<'a>(&self, components: impl IntoIterator<Item = &'a str>, create: bool) -> io::Result<DirFd> {
        let mut dir = self.clone();
        for c in components {
            if create {
                match rustix::fs::mkdirat(&*dir.0, c, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            dir = dir.open_dir(OsStr::new(c))?;
        }
        Ok(dir)
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
        if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        // Regular files ignore O_NONBLOCK; cleared all the same, so reads
        // behave as everywhere else.
        rustix::fs::fcntl_setfl(&fd, rustix::fs::fcntl_getfl(&fd)? - OFlags::NONBLOCK)?;
        Ok(File::from(fd))
    }

    /// Creates a new, private (0600) file with a fresh random name starting
    /// with `prefix`; returns it and its name.
    pub fn create_temp(&self, prefix: &str) -> io::Result<(File, String)> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        loop {
            let mut random = [0u8; 8];
            aws_lc_rs::rand::fill(&mut random).map_err(|_| io::Error::other("no system randomness"))?;
            let name = format!("{prefix}{}.part", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
            match rustix::fs::openat(&*self.0, name.as_str(), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((File::from(fd), name)),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens (or, with `create`, creates) the regular file `name` for reading
    /// and writing, locked against every other holder (`flock`, exclusive,
    /// non-blocking): `Ok(None)` when someone else holds it or, without
    /// `create`, when it does not exist. The lock goes with the file.
    pub fn open_locked(&self, name: &OsStr, create: bool) -> io::Result<Option<File>> {
        let mut flags = OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if create {
            flags |= OFlags::CREATE;
        }
        let fd = match rustix::fs::openat(&*self.0, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `data` to `name` through a temporary file and a rename, so a
    /// reader sees the old content or the new, never a mix.
    pub fn write_file(&self, name: &OsStr, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let (mut f, tmp) = self.create_temp(".xfer-")?;
        let r = f.write_all(data).and_then(|()| self.rename(OsStr::new(&tmp), self, name));
        if r.is_err() {
            let _ = self.unlink(OsStr::new(&tmp));
        }
        r
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

    /// Makes `name` a symbolic link to `target`, atomically replacing a
    /// file or link there: the link is made under a fresh name, then
    /// renamed over `name` (`rename` never follows the link it moves).
    pub fn make_link(&self, target: &str, name: &OsStr) -> io::Result<()> {
        loop {
            let mut random = [0u8; 8];
            aws_lc_rs::rand::fill(&mut random).map_err(|_| io::Error::other("no system randomness"))?;
            let tmp = format!(".xfer-link-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
            match rustix::fs::symlinkat(target, &*self.0, tmp.as_str()) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
            return self.rename(OsStr::new(&tmp), self, name).inspect_err(|_| {
                let _ = self.unlink(OsStr::new(&tmp));
            });
        }
    }

    /// Removes the file (or link) `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&*self.0, name, AtFlags::empty())?)
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&*self.0, name, AtFlags::REMOVEDIR)?)
    }

    /// Removes the folder `name` and everything in it, never following a
    /// link (links are removed, not their targets).
    pub fn remove_tree(&self, name: &OsStr) -> io::Result<()> {
        let dir = self.open_dir(name)?;
        for child in dir.names()? {
            match dir.stat(&child)? {
                Some(e) if e.kind == Kind::Dir => dir.remove_tree(&child)?,
                Some(_) => dir.unlink(&child)?,
                None => {}
            }
        }
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
    #[allow(clippy::unnecessary_cast)] // st_dev's type differs between targets
    pub fn device(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&*self.0)?.st_dev as u64)
    }

    /// Makes every pending write on this folder's filesystem durable.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&*self.0)?)
    }

    /// Makes renames and removals in this folder durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&*self.0)?)
    }
}

#[allow(clippy::unnecessary_cast)] // field types differ between targets
fn entry(st: &Stat) -> Entry {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    let meta = Meta {
        size: st.st_size as u64,
        mode: (st.st_mode as u32) & 0o7777,
        mtime: Timestamp { secs: st.st_mtime as i64, nanos: (st.st_mtime_nsec as u32).min(999_999_999) },
    };
    Entry { kind, meta }
}

/// True for the error a refused symbolic link gives.
pub fn is_link(e: &io::Error) -> bool {
    rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::LOOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_refused_at_every_step() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root/real")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/secret"), b"s").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/link")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside/secret"), t.path().join("root/real/file-link")).unwrap();
        let root = DirFd::open_path(&t.path().join("root")).unwrap();
        assert!(is_link(&root.descend(["link"], false).unwrap_err()));
        assert!(is_link(&root.descend(["link", "x"], true).unwrap_err()));
        let real = root.descend(["real"], false).unwrap();
        assert!(is_link(&real.open_file(OsStr::new("file-link")).unwrap_err()));
        // A FIFO is refused at once (no writer: a blocking open would hang).
        rustix::fs::mkfifoat(&*real.0, "fifo", Mode::from_raw_mode(0o600)).unwrap();
        let e = real.open_file(OsStr::new("fifo")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(real.stat(OsStr::new("file-link")).unwrap().unwrap().kind, Kind::Symlink);
        assert!(!t.path().join("outside/x").exists());
    }

    #[test]
    fn temp_rename_and_tree_removal() {
        let t = tempfile::tempdir().unwrap();
        let root = DirFd::open_path(t.path()).unwrap();
        let (mut f, name) = root.create_temp(".xfer-").unwrap();
        io::Write::write_all(&mut f, b"data").unwrap();
        let d = root.descend(["a", "b"], true).unwrap();
        root.rename(OsStr::new(&name), &d, OsStr::new("final")).unwrap();
        assert_eq!(std::fs::read(t.path().join("a/b/final")).unwrap(), b"data");
        std::fs::create_dir(t.path().join("kept")).unwrap();
        std::fs::write(t.path().join("kept/file"), b"k").unwrap();
        std::os::unix::fs::symlink(t.path().join("kept"), t.path().join("a/b/link")).unwrap();
        root.remove_tree(OsStr::new("a")).unwrap();
        assert!(!t.path().join("a").exists());
        // The link went; what it pointed to did not.
        assert_eq!(std::fs::read(t.path().join("kept/file")).unwrap(), b"k");
        assert_eq!(root.names().unwrap(), vec![OsString::from("kept")]);
    }
}

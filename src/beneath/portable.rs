//! The portable implementation (macOS, Windows, and Linux with the
//! `portable-io` feature), on `cap-std`: every name is resolved beneath an
//! open directory handle and no link is followed (`open_dir_nofollow`,
//! `FollowSymlinks::No`). There is no `syncfs`: each file is synced on its
//! own (`sync_all`, which is `F_FULLFSYNC` on macOS) and each folder after
//! its renames, where the platform can sync a folder at all.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use cap_fs_ext::{DirExt, FollowSymlinks, MetadataExt as _, OpenOptionsFollowExt};
use cap_std::fs::{Dir, Metadata, OpenOptions};

use super::{Entry, Kind, link_refused};
use crate::walk::Meta;

/// No `syncfs` here: files and folders are synced one by one.
pub const SYNCS_FILESYSTEM: bool = false;

/// An open directory; cheap to clone (the handle is shared). `origin` is
/// the path the walk down started from: only asked for free space on
/// platforms that measure it by path, never used to reach a file.
#[derive(Debug, Clone)]
pub struct DirFd {
    dir: Arc<Dir>,
    #[cfg_attr(unix, allow(dead_code))]
    origin: Arc<Path>,
}

impl DirFd {
    /// Opens a directory by path, from the process's point of view. Used only
    /// for paths the local user chose (a root, `--out`, a source's parent).
    pub fn open_path(path: &Path) -> io::Result<DirFd> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(DirFd { dir: Arc::new(dir), origin: path.into() })
    }

    fn child(&self, dir: Dir) -> DirFd {
        DirFd { dir: Arc::new(dir), origin: self.origin.clone() }
    }

    /// Opens the child folder `name`; a link there is refused (and a file
    /// is "not a directory").
    pub fn open_dir(&self, name: &OsStr) -> io::Result<DirFd> {
        match self.dir.open_dir_nofollow(name) {
            Ok(d) => Ok(self.child(d)),
            Err(e) => match self.stat(name) {
                Ok(Some(s)) if s.kind == Kind::Symlink => Err(link_refused()),
                Ok(Some(s)) if s.kind != Kind::Dir => Err(io::ErrorKind::NotADirectory.into()),
                _ => Err(e),
            },
        }
    }

    /// Creates the folder `name` (0755 less the umask, as on Linux:
    /// cap-std's own default is 0777); false when something is already
    /// there.
    pub fn make_dir(&self, name: &str) -> io::Result<bool> {
        #[allow(unused_mut)] // no modes on Windows
        let mut b = cap_std::fs::DirBuilder::new();
        #[cfg(unix)]
        cap_std::fs::DirBuilderExt::mode(&mut b, 0o755);
        match self.dir.create_dir_with(name, &b) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Describes `name` without following it; `None` when it does not exist.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Entry>> {
        match self.dir.symlink_metadata(name) {
            Ok(m) => Ok(Some(entry(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Describes this folder itself.
    pub fn stat_self(&self) -> io::Result<Entry> {
        Ok(entry(&self.dir.dir_metadata()?))
    }

    /// Opens the regular file `name` for reading; a link, or anything but
    /// a regular file, is refused, checked on the opened handle.
    pub fn open_file(&self, name: &OsStr) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).follow(not_a_link_here(self, name)?);
        nonblocking(&mut o);
        let f = self.dir.open_with(name, &o).map_err(|e| self.which_error(name, e))?;
        if !f.metadata()?.is_file() {
            return Err(super::not_regular());
        }
        let f = f.into_std();
        blocking(&f)?;
        Ok(f)
    }

    /// A link met where it may not be followed is reported as one.
    fn which_error(&self, name: &OsStr, e: io::Error) -> io::Error {
        match self.stat(name) {
            Ok(Some(s)) if s.kind == Kind::Symlink => link_refused(),
            _ => e,
        }
    }

    /// Creates the new, private file `name` for writing; fails with
    /// `AlreadyExists` if anything (a link included) is there.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true).follow(FollowSymlinks::No);
        private(&mut o);
        Ok(self.dir.open_with(name, &o)?.into_std())
    }

    /// Opens (or, with `create`, creates) the regular file `name` for
    /// reading and writing, never through a link; `Ok(None)` when it does
    /// not exist and `create` is off. The caller locks it.
    pub fn open_rw(&self, name: &OsStr, create: bool) -> io::Result<Option<File>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create).follow(FollowSymlinks::No);
        private(&mut o);
        match self.dir.open_with(name, &o) {
            Ok(f) => Ok(Some(f.into_std())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(self.which_error(name, e)),
        }
    }

    /// Renames `from` here to `to` in `to_dir`, atomically replacing it.
    pub fn rename(&self, from: &OsStr, to_dir: &DirFd, to: &OsStr) -> io::Result<()> {
        self.dir.rename(from, &to_dir.dir, to)
    }

    /// The target of the link `name`, as written (never followed; an
    /// absolute target is returned, not refused, so the caller can say
    /// what it skipped).
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        Ok(self.dir.read_link_contents(name)?.into_os_string())
    }

    /// Makes the new link `name` pointing at `target`. On Windows a link
    /// needs Developer Mode or the privilege to make one; without it this
    /// fails and the caller reports it.
    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        #[cfg(unix)]
        return self.dir.symlink_contents(target, name);
        // Windows tells links to folders from links to files; what the
        // target is now decides (resolved beneath this folder only).
        #[cfg(windows)]
        return match self.dir.metadata(target) {
            Ok(m) if m.is_dir() => self.dir.symlink_dir(target, name),
            _ => self.dir.symlink_file(target, name),
        };
    }

    /// Removes the file (or link) `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        self.dir.remove_file_or_symlink(name)
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&self, name: &OsStr) -> io::Result<()> {
        self.dir.remove_dir(name)
    }

    /// The names in this folder, sorted.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut names = self.dir.entries()?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    /// Bytes an unprivileged user may still write on this folder's
    /// filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        #[cfg(unix)]
        return rustix::fs::fstatvfs(&*self.dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).map_err(Into::into);
        #[cfg(windows)]
        return fs4::available_space(&self.origin);
    }

    /// The size of this folder's filesystem, in bytes.
    pub fn total_space(&self) -> io::Result<u64> {
        #[cfg(unix)]
        return rustix::fs::fstatvfs(&*self.dir).map(|s| s.f_blocks.saturating_mul(s.f_frsize)).map_err(Into::into);
        #[cfg(windows)]
        return fs4::total_space(&self.origin);
    }

    /// The device (volume) this folder is on.
    pub fn device(&self) -> io::Result<u64> {
        Ok(self.dir.dir_metadata()?.dev())
    }

    /// No `syncfs` here: callers sync files and folders one by one.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        Ok(())
    }

    /// Makes renames and removals in this folder durable, where a folder
    /// can be synced (not on Windows, whose NTFS journals them itself).
    pub fn sync(&self) -> io::Result<()> {
        // cap-std may hold a folder by a path-only handle (`O_PATH`), which
        // cannot be synced: open the folder itself for reading.
        #[cfg(unix)]
        {
            use cap_fs_ext::OpenOptionsMaybeDirExt;
            self.dir.open_with(".", OpenOptions::new().read(true).maybe_dir(true))?.sync_all()
        }
        #[cfg(windows)]
        return Ok(());
    }

    /// Whether both are clones of one open handle.
    pub fn same_handle(&self, other: &DirFd) -> bool {
        Arc::ptr_eq(&self.dir, &other.dir)
    }

    /// Makes a FIFO, for tests of what a walk or an open refuses.
    #[cfg(all(test, target_os = "linux"))]
    pub fn make_fifo(&self, name: &str) -> io::Result<()> {
        use std::os::fd::AsFd;
        Ok(rustix::fs::mkfifoat(self.dir.as_fd(), name, rustix::fs::Mode::from_raw_mode(0o600))?)
    }
}

/// How to open a file for reading without following a link. On Unix,
/// `O_NOFOLLOW`. On Windows, not following means opening every reparse
/// point itself, and files compressed by `compact`, deduplicated, or left
/// in the cloud by OneDrive are reparse points too: their stub would be
/// read instead of their bytes. There a link is refused by looking first,
/// and the open follows (cap-std still never resolves a name outside the
/// root, even if a link is swapped in between).
#[cfg(unix)]
fn not_a_link_here(_: &DirFd, _: &OsStr) -> io::Result<FollowSymlinks> {
    Ok(FollowSymlinks::No)
}

#[cfg(not(unix))]
fn not_a_link_here(dir: &DirFd, name: &OsStr) -> io::Result<FollowSymlinks> {
    match dir.stat(name)? {
        Some(e) if e.kind == Kind::Symlink => Err(link_refused()),
        _ => Ok(FollowSymlinks::Yes),
    }
}

/// Opening a FIFO with no writer would wait forever: open without
/// waiting, check the kind, then switch back to blocking reads.
fn nonblocking(o: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use cap_std::fs::OpenOptionsExt;
        o.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    #[cfg(not(unix))]
    let _ = o;
}

fn blocking(f: &File) -> io::Result<()> {
    #[cfg(unix)]
    rustix::fs::fcntl_setfl(f, rustix::fs::fcntl_getfl(f)? - rustix::fs::OFlags::NONBLOCK)?;
    #[cfg(not(unix))]
    let _ = f;
    Ok(())
}

/// New files are private (0600) where modes exist.
fn private(o: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use cap_std::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = o;
}

fn entry(m: &Metadata) -> Entry {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    let modified = m.modified().map(|t| t.into_std()).unwrap_or(std::time::UNIX_EPOCH);
    Entry { kind, meta: Meta::new(m.len(), mode(m, kind), modified) }
}

#[cfg(unix)]
fn mode(m: &Metadata, _: Kind) -> u32 {
    use cap_std::fs::PermissionsExt;
    m.permissions().mode() & 0o7777
}

/// Windows has no modes: folders read as 0755, files as 0644, or 0444
/// when read-only.
#[cfg(not(unix))]
fn mode(m: &Metadata, kind: Kind) -> u32 {
    match kind {
        Kind::Dir => 0o755,
        _ if m.permissions().readonly() => 0o444,
        _ => 0o644,
    }
}

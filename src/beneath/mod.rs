//! Race-free filesystem access beneath a directory handle.
//!
//! Checking a path with `lstat` and then using it by name leaves a window in
//! which someone with write access to the tree could swap a folder for a
//! symbolic link. Here every operation is relative to an open directory
//! ([`DirFd`]) and every component is opened with `O_NOFOLLOW`: a symbolic
//! link anywhere, there from the start or swapped in mid-operation, makes
//! the operation fail (`ELOOP`/`ENOTDIR`) instead of being followed. `store`
//! and `walk` build on this; nothing here knows about wire paths.
//!
//! Two implementations give the same [`DirFd`]: Linux's own system calls
//! (`linux.rs`, with `syncfs` for group commit), and `cap-std` everywhere
//! else (`portable.rs`), which Linux builds use too with the `portable-io`
//! feature so that the portable code is tested where the tests run.

use std::ffi::OsStr;
use std::fs::File;
use std::io;

use crate::walk::Meta;

#[cfg(all(target_os = "linux", not(feature = "portable-io")))]
mod linux;
#[cfg(all(target_os = "linux", not(feature = "portable-io")))]
pub use linux::{DirFd, SYNCS_FILESYSTEM};

#[cfg(any(not(target_os = "linux"), feature = "portable-io"))]
mod portable;
#[cfg(any(not(target_os = "linux"), feature = "portable-io"))]
pub use portable::{DirFd, SYNCS_FILESYSTEM};

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

impl DirFd {
    /// Opens the folder reached by `components`, creating missing ones
    /// when `create` is set (like `mkdir -p`). Every step refuses links.
    /// Where there is no `syncfs` to make new folders durable later, each
    /// new one is made durable in its parent at once.
    pub fn descend<'a>(&self, components: impl IntoIterator<Item = &'a str>, create: bool) -> io::Result<DirFd> {
        let mut dir = self.clone();
        for c in components {
            if create && dir.make_dir(c)? && !SYNCS_FILESYSTEM {
                dir.sync()?;
            }
            dir = dir.open_dir(OsStr::new(c))?;
        }
        Ok(dir)
    }

    /// Creates a new, private (0600) file with a fresh random name starting
    /// with `prefix`; returns it and its name.
    pub fn create_temp(&self, prefix: &str) -> io::Result<(File, String)> {
        loop {
            let name = format!("{prefix}{}.part", random_hex()?);
            match self.create_new(&name) {
                Ok(f) => return Ok((f, name)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens (or, with `create`, creates) the regular file `name` for reading
    /// and writing, locked against every other holder (exclusive,
    /// non-blocking): `Ok(None)` when someone else holds it or, without
    /// `create`, when it does not exist. The lock goes with the file.
    pub fn open_locked(&self, name: &OsStr, create: bool) -> io::Result<Option<File>> {
        let Some(f) = self.open_rw(name, create)? else { return Ok(None) };
        // A FIFO planted under a partial copy's name would block its reader.
        if !f.metadata()?.is_file() {
            return Err(not_regular());
        }
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
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

    /// Makes `name` a symbolic link to `target`, atomically replacing a
    /// file or link there: the link is made under a fresh name, then
    /// renamed over `name` (`rename` never follows the link it moves).
    pub fn make_link(&self, target: &str, name: &OsStr) -> io::Result<()> {
        loop {
            let tmp = format!(".xfer-link-{}", random_hex()?);
            match self.symlink(target, &tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            return self.rename(OsStr::new(&tmp), self, name).inspect_err(|_| {
                let _ = self.unlink(OsStr::new(&tmp));
            });
        }
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
        // Windows will not remove a folder someone holds open.
        drop(dir);
        self.rmdir(name)
    }
}

/// 16 random hex digits, for names nobody can guess or collide with.
pub(crate) fn random_hex() -> io::Result<String> {
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| io::Error::other("no system randomness"))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// The error for a symbolic link met where xfer will not follow one:
/// `ELOOP` where there are error numbers, as the kernel itself reports it.
pub fn link_refused() -> io::Error {
    #[cfg(unix)]
    return rustix::io::Errno::LOOP.into();
    #[cfg(not(unix))]
    return io::Error::other(LinkRefused);
}

/// True for the error a refused symbolic link gives.
pub fn is_link(e: &io::Error) -> bool {
    #[cfg(unix)]
    return rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::LOOP);
    #[cfg(not(unix))]
    return e.get_ref().is_some_and(|i| i.is::<LinkRefused>());
}

#[cfg(not(unix))]
#[derive(Debug)]
struct LinkRefused;

#[cfg(not(unix))]
impl std::fmt::Display for LinkRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("is a symbolic link")
    }
}

#[cfg(not(unix))]
impl std::error::Error for LinkRefused {}

/// The error for a FIFO, device or socket where a regular file was expected.
fn not_regular() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::ffi::OsString;

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
        #[cfg(target_os = "linux")]
        {
            real.make_fifo("fifo").unwrap();
            let e = real.open_file(OsStr::new("fifo")).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
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

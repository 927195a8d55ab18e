//! A pull's staging area in its destination: `OUT/.xfer/tmp/NAME/`, with
//! its lock beside it, `OUT/.xfer/tmp/NAME.lock`, held while the pull runs.
//! The lock is made (locked, under a fresh name, then renamed) before the
//! folder and removed after it, so a folder without its lock, or a lock
//! nobody holds, is always a killed pull's: the next pull removes both at
//! once, whenever the kill came (no age to wait for). `.xfer` itself goes
//! when nothing else is left.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;

use super::{PARTIAL_DIR, Root, STAGING_DIR};
use crate::beneath::{DirFd, Kind};

/// A pull's lock, beside its folder.
const LOCK_SUFFIX: &str = ".lock";
/// A lock being made, before its rename.
const NEW_LOCK: &str = ".lock-";

impl Root {
    /// A pull's destination: temporary files go to a folder of this pull's
    /// own under `OUT/.xfer/tmp`, locked while the pull runs, so that what a
    /// killed pull left behind is found and removed by the next one (and
    /// never litters the destination's folders).
    pub fn open_pull(dir: &Path) -> io::Result<Root> {
        let mut root = Root::open_local(dir)?;
        let tmp = root.dir.descend([STAGING_DIR, "tmp"], true)?;
        clear_dead_pulls(&tmp);
        let (lock, new_name) = tmp.create_temp(NEW_LOCK)?;
        if lock.try_lock().is_err() {
            return Err(io::Error::other("a fresh lock file is locked by someone else"));
        }
        let name = loop {
            let name = crate::beneath::random_hex()?;
            let taken = |n: &str| tmp.stat(OsStr::new(n)).map(|e| e.is_some());
            if !taken(&name)? && !taken(&format!("{name}{LOCK_SUFFIX}"))? {
                break name;
            }
        };
        tmp.rename(OsStr::new(&new_name), &tmp, OsStr::new(&format!("{name}{LOCK_SUFFIX}")))?;
        let own = tmp.descend([name.as_str()], true)?;
        root.staging = Some(own);
        root.pull_staging = Some(std::sync::Arc::new(PullStaging { top: root.dir.clone(), name, _lock: lock }));
        Ok(root)
    }
}

/// Removes what killed pulls left in `tmp`: folders whose lock is gone or
/// free, free locks, and locks that were being made. Best effort.
fn clear_dead_pulls(tmp: &DirFd) {
    let free = |name: &OsStr| matches!(tmp.open_locked(name, false), Ok(Some(_)));
    // Only names of the forms pulls make: nothing else here is touched.
    let ours = |n: &str| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit());
    for name in tmp.names().unwrap_or_default() {
        let Some(text) = name.to_str() else { continue };
        if let Some(folder) = text.strip_suffix(LOCK_SUFFIX).filter(|f| ours(f)) {
            if free(&name) {
                let _ = tmp.remove_tree(OsStr::new(folder));
                let _ = tmp.unlink(&name);
            }
        } else if text.starts_with(NEW_LOCK) {
            if free(&name) {
                let _ = tmp.unlink(&name);
            }
        } else if ours(text)
            && matches!(tmp.stat(&name), Ok(Some(e)) if e.kind == Kind::Dir)
            && matches!(tmp.stat(OsStr::new(&format!("{text}{LOCK_SUFFIX}"))), Ok(None))
        {
            let _ = tmp.remove_tree(&name);
        }
    }
}

/// A pull's staging folder, `OUT/.xfer/tmp/NAME`: its lock file beside it
/// is held while the pull runs, and it is removed when the pull ends, with
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
            // The folder first, its lock last (still held): a folder is
            // never without its lock while its pull lives.
            let _ = tmp.remove_tree(OsStr::new(&self.name));
            let _ = tmp.unlink(OsStr::new(&format!("{}{LOCK_SUFFIX}", self.name)));
        }
        if let Ok(staging) = self.top.descend([STAGING_DIR], false) {
            rmdir(&staging, "tmp");
            rmdir(&staging, PARTIAL_DIR);
        }
        rmdir(&self.top, STAGING_DIR);
    }
}

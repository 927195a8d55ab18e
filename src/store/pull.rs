//! A pull's staging area in its destination: `OUT/.xfer/tmp/<random>/`,
//! locked while the pull runs and removed when it ends (with `.xfer` itself
//! when nothing else is left); what a killed pull left is removed by the
//! next one.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{LOCK_FILE, PARTIAL_DIR, Root, STAGING_DIR, to_system_time};
use crate::beneath::DirFd;

impl Root {
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
        if lock.try_lock().is_err() {
            return Err(io::Error::other("a fresh lock file is locked by someone else"));
        }
        own.rename(OsStr::new(&tmp_name), &own, OsStr::new(LOCK_FILE))?;
        root.staging = Some(own);
        root.pull_staging = Some(std::sync::Arc::new(PullStaging { top: root.dir.clone(), name, _lock: lock }));
        Ok(root)
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

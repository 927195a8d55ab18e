//! BLAKE3 of files a root already holds, computed once per version of each
//! file and bounded per connection.
//!
//! A push asks, file by file, whether the server already has an identical
//! copy (`PROBE`); answering means hashing the server's copy. Without care,
//! a 44-byte probe makes the server read a whole large file, again for
//! every probe, even after the client has left. So: hashes are cached,
//! keyed by what identifies one version of one file (device, inode, size,
//! mtime and ctime, which no user can set back); the hashing a connection
//! causes is bounded ([`Work`]) and stops when the connection goes; and a
//! file that changes while it is hashed is not cached.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Files whose hashes are remembered; older entries are forgotten first.
pub const CACHED_FILES: usize = 65_536;

/// Bytes of uncached hashing one connection may cause.
pub const HASH_ALLOWANCE: u64 = 16 << 30;

/// What identifies one version of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

impl Key {
    #[cfg(unix)]
    fn of(f: &File) -> Option<Key> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().ok()?;
        Some(Key {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec() as u64),
            ctime: (m.ctime(), m.ctime_nsec() as u64),
        })
    }

    /// Without a file identity (Windows: std cannot read the file index
    /// yet) the key still tells a file changed while it was read, but it is
    /// never remembered: see [`Key::CACHEABLE`].
    #[cfg(not(unix))]
    fn of(f: &File) -> Option<Key> {
        let m = f.metadata().ok()?;
        let nanos = |t: std::io::Result<std::time::SystemTime>| {
            let d = t.ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some((d.as_secs() as i64, u64::from(d.subsec_nanos())))
        };
        Some(Key { dev: 0, ino: 0, size: m.len(), mtime: nanos(m.modified())?, ctime: nanos(m.created())? })
    }

    /// Whether a key names one file: only then may its hash be remembered.
    const CACHEABLE: bool = cfg!(unix);
}

/// Remembered hashes, and their keys oldest first (forgotten first).
type Known = (HashMap<Key, [u8; 32]>, VecDeque<Key>);

/// The cache, shared by every connection to one root.
#[derive(Debug, Default)]
pub struct Hashes {
    known: Mutex<Known>,
}

/// The hashing one connection may still cause, and whether it is gone.
#[derive(Debug)]
pub struct Work {
    left: AtomicU64,
    cancelled: AtomicBool,
}

impl Work {
    pub fn new(allowance: u64) -> Work {
        Work { left: AtomicU64::new(allowance), cancelled: AtomicBool::new(false) }
    }

    /// Stops hashing for this connection (it has gone).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes from the allowance, or false when it is spent.
    fn take(&self, n: u64) -> bool {
        self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok()
    }
}

/// Hashes what is left of `f` into `hasher` within `work`'s allowance,
/// checking between blocks whether the work was cancelled. Returns the
/// bytes read, or `None` when cancelled, out of allowance or unreadable.
pub fn read_into(f: &mut impl Read, hasher: &mut blake3::Hasher, work: &Work) -> Option<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if work.is_cancelled() {
            return None;
        }
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some(total);
        }
        if !work.take(n as u64) {
            return None;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

impl Hashes {
    /// The BLAKE3 of the open file `f` if it has exactly `size` bytes: from
    /// the cache, or by reading it within `work`'s allowance. `None` when it
    /// has another size, could not be read, changed while being read, or
    /// the allowance ran out or was cancelled. Blocking.
    pub fn of_file(&self, mut f: &File, size: u64, work: &Work) -> Option<[u8; 32]> {
        let key = Key::of(f)?;
        if key.size != size {
            return None;
        }
        if let Some(h) = self.lock().0.get(&key).filter(|_| Key::CACHEABLE) {
            return Some(*h);
        }
        let mut hasher = blake3::Hasher::new();
        let total = read_into(&mut f, &mut hasher, work)?;
        // A file written meanwhile is not this version: answer nothing.
        if total != size || Key::of(f)? != key {
            return None;
        }
        let hash = *hasher.finalize().as_bytes();
        if Key::CACHEABLE {
            self.remember(key, hash);
        }
        Some(hash)
    }

    fn remember(&self, key: Key, hash: [u8; 32]) {
        let mut known = self.lock();
        let (map, order) = &mut *known;
        if map.insert(key, hash).is_none() {
            order.push_back(key);
            while order.len() > CACHED_FILES {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files whose hash is remembered.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(data).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn a_file_is_hashed_once_per_version() {
        let hashes = Hashes::default();
        let data = vec![7u8; 3 << 20];
        let (t, f) = file_with(&data);
        let work = Work::new(4 << 20);
        let want = *blake3::hash(&data).as_bytes();
        assert_eq!(hashes.of_file(&f, data.len() as u64, &work), Some(want));
        if cfg!(not(unix)) {
            return; // no file identity to remember a hash by
        }
        // Cached: the allowance (1 MiB left) is not touched again.
        for _ in 0..10 {
            assert_eq!(hashes.of_file(&File::open(t.path()).unwrap(), data.len() as u64, &work), Some(want));
        }
        assert_eq!(hashes.len(), 1);
        // Another size: no hash, no read.
        assert_eq!(hashes.of_file(&f, 5, &work), None);
        // A new version (rewritten: ctime moves) is hashed again, and the
        // allowance left does not cover it.
        std::fs::write(t.path(), vec![8u8; 3 << 20]).unwrap();
        assert_eq!(hashes.of_file(&File::open(t.path()).unwrap(), 3 << 20, &work), None);
    }

    #[test]
    fn cancelled_work_hashes_nothing() {
        let hashes = Hashes::default();
        let (_t, f) = file_with(&[1u8; 4096]);
        let work = Work::new(u64::MAX);
        work.cancel();
        assert_eq!(hashes.of_file(&f, 4096, &work), None);
        assert!(hashes.is_empty());
    }
}

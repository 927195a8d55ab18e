//! Partial copies kept for resume.
//!
//! A receiver writes each file of at least [`RESUMABLE_MIN`] bytes into its
//! partial folder (`ROOT/.xfer/partial`) under a name derived from what
//! identifies the transfer: the sender's name, the path, and the size and
//! mtime the sender announced. If the transfer is cut, the data stays; the
//! next attempt for the same identity finds it by name, hashes it, and
//! offers its length and BLAKE3 to the sender, which continues from there
//! only if its own file starts with the same bytes. A `.meta` file beside
//! the data says in JSON what it is (for people, for expiry, and for a
//! pulling client to rebuild its offers).
//!
//! Whoever uses a partial holds an exclusive `flock` on it, so two
//! transfers of the same identity never write one file: the second writes
//! an ordinary temporary file instead. Nothing here trusts the data on
//! disk: it is offered only by hash, and the final BLAKE3 still covers the
//! whole file.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::beneath::DirFd;
use crate::hashes::Work;
use crate::protocol::{FileHeader, Timestamp, WirePath};

/// Smaller files are cheaper to send again than to track.
pub const RESUMABLE_MIN: u64 = 1 << 20;

/// Default bytes of partial copies one sender may leave on a receiver.
pub const DEFAULT_QUOTA: u64 = 16 << 30;

/// Default age after which a partial copy nobody resumed is deleted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a partial copy is a prefix of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialId {
    /// The sender's name: a client's certificate name on a server, the
    /// server's name on a pulling client.
    pub peer: String,
    pub path: String,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl PartialId {
    pub fn new(peer: &str, path: &WirePath, size: u64, mtime: Timestamp) -> PartialId {
        PartialId {
            peer: peer.to_owned(),
            path: path.as_str().to_owned(),
            size,
            mtime_secs: mtime.secs,
            mtime_nanos: mtime.nanos,
        }
    }

    pub fn mtime(&self) -> Timestamp {
        Timestamp { secs: self.mtime_secs, nanos: self.mtime_nanos }
    }

    /// The data file's name: a hash of the sender and the path, so it can
    /// be found directly and says nothing about the path to someone listing
    /// the folder. One partial copy per sender and path: a newer version of
    /// the file takes the place of the older one's copy, so interrupted
    /// pushes of a file that keeps changing do not pile up.
    pub fn data_name(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [self.peer.as_bytes(), self.path.as_bytes()] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().to_hex()[..32].to_owned()
    }

    pub fn meta_name(&self) -> String {
        meta_name(&self.data_name())
    }
}

fn meta_name(data: &str) -> String {
    format!("{data}.meta")
}

/// A partial copy claimed for resuming: locked, its length and the state
/// of the hash of those bytes.
#[derive(Debug)]
pub struct Partial {
    pub file: File,
    pub id: PartialId,
    pub offset: u64,
    pub hasher: blake3::Hasher,
}

impl Partial {
    /// The BLAKE3 of the bytes held.
    pub fn prefix(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }

    /// True when `h` continues this very copy: same file version, and the
    /// payload starts where the copy ends.
    pub fn continued_by(&self, h: &FileHeader) -> bool {
        h.offset > 0 && self.offset == h.offset && self.id.size == h.size && self.id.mtime() == h.mtime
    }
}

/// Finds, claims and hashes the partial copy of `id` in `dir`, if there is
/// one that nobody else holds. Blocking: it reads the whole prefix, within
/// `work`'s allowance (`None` past it, or once the work is cancelled).
pub fn claim(dir: &DirFd, id: &PartialId, work: &Work) -> io::Result<Option<Partial>> {
    let Some(mut file) = dir.open_locked(OsStr::new(&id.data_name()), false)? else { return Ok(None) };
    // The copy under this name may be of another version of the file.
    if read_meta(dir, &id.meta_name()).as_ref() != Some(id) {
        return Ok(None);
    }
    let mut hasher = blake3::Hasher::new();
    let Some(offset) = crate::hashes::read_into(&mut file, &mut hasher, work) else { return Ok(None) };
    if offset == 0 || offset > id.size {
        return Ok(None);
    }
    Ok(Some(Partial { file, id: id.clone(), offset, hasher }))
}

/// Creates (or takes over) the partial file of `id`, empty, and records
/// what it is. `None` if another transfer of the same identity holds it.
pub fn create(dir: &DirFd, id: &PartialId) -> io::Result<Option<File>> {
    let Some(file) = dir.open_locked(OsStr::new(&id.data_name()), true)? else { return Ok(None) };
    file.set_len(0)?;
    let meta = serde_json::to_vec(id).map_err(io::Error::other)?;
    dir.write_file(OsStr::new(&id.meta_name()), &meta)?;
    Ok(Some(file))
}

/// Deletes a partial copy's description only (its data is moving on).
pub fn remove_description(dir: &DirFd, data_name: &str) {
    let _ = dir.unlink(OsStr::new(&meta_name(data_name)));
}

/// Deletes a partial copy and its description.
pub fn remove(dir: &DirFd, data_name: &str) {
    let _ = dir.unlink(OsStr::new(data_name));
    let _ = dir.unlink(OsStr::new(&meta_name(data_name)));
}

/// The partial copies in `dir` that `peer` sent, as their `.meta` files
/// record them.
pub fn list(dir: &DirFd, peer: &str) -> Vec<PartialId> {
    let mut out = Vec::new();
    for name in dir.names().unwrap_or_default() {
        let Some(data) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else { continue };
        let Some(id) = read_meta(dir, &name.to_string_lossy()) else { continue };
        if id.peer == peer && id.data_name() == data {
            out.push(id);
        }
    }
    out
}

fn read_meta(dir: &DirFd, name: &str) -> Option<PartialId> {
    let f = dir.open_file(OsStr::new(name)).ok()?;
    serde_json::from_reader::<_, PartialId>(io::BufReader::new(f).take(16 * 1024)).ok()
}

/// Deletes `peer`'s oldest partial copies (those nobody holds) until the
/// bytes its copies hold, plus `incoming` more, fit `quota`. Returns false
/// when they still do not (the new transfer is then simply not kept as a
/// partial copy).
pub fn make_room(dir: &DirFd, peer: &str, incoming: u64, quota: u64) -> bool {
    let mut held: Vec<(crate::protocol::Timestamp, String, u64)> = list(dir, peer)
        .into_iter()
        .filter_map(|id| {
            let name = id.data_name();
            let e = dir.stat(OsStr::new(&name)).ok().flatten()?;
            Some((e.meta.mtime, name, e.meta.size))
        })
        .collect();
    let mut total: u64 = held.iter().map(|h| h.2).sum();
    held.sort_by_key(|h| (h.0.secs, h.0.nanos));
    for (_, name, size) in held {
        if total.saturating_add(incoming) <= quota {
            break;
        }
        if let Ok(Some(_locked)) = dir.open_locked(OsStr::new(&name), false) {
            remove(dir, &name);
            total -= size;
        }
    }
    total.saturating_add(incoming) <= quota
}

/// Deletes partial copies (and stray descriptions or temporary files) not
/// written to for `ttl`, unless someone holds them right now. Returns how
/// many were removed.
pub fn expire(dir: &DirFd, ttl: Duration) -> usize {
    let now = SystemTime::now();
    let old = |name: &OsString| {
        dir.stat(name).ok().flatten().is_some_and(|e| {
            let t = crate::store::to_system_time(e.meta.mtime);
            now.duration_since(t).is_ok_and(|age| age >= ttl)
        })
    };
    let mut removed = 0;
    for name in dir.names().unwrap_or_default() {
        let Some(text) = name.to_str() else { continue };
        if text.ends_with(".meta") {
            // A description outlives its data only if the data went first.
            let data = text.trim_end_matches(".meta");
            if dir.stat(OsStr::new(data)).ok().flatten().is_none() && old(&name) {
                let _ = dir.unlink(&name);
            }
            continue;
        }
        if !old(&name) {
            continue;
        }
        // Held by a transfer in progress: not ours to delete.
        if let Ok(Some(_locked)) = dir.open_locked(&name, false) {
            remove(dir, text);
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn id(path: &str) -> PartialId {
        PartialId::new("runner-1", &WirePath::parse(path).unwrap(), 10, Timestamp { secs: 5, nanos: 6 })
    }

    #[test]
    fn a_partial_is_found_by_identity_hashed_and_locked_while_claimed() {
        let t = tempfile::tempdir().unwrap();
        let dir = DirFd::open_path(t.path()).unwrap();
        let mut f = create(&dir, &id("a/f")).unwrap().unwrap();
        f.write_all(b"hello").unwrap();
        assert!(create(&dir, &id("a/f")).unwrap().is_none(), "a second writer is kept out");
        drop(f);
        let p = claim(&dir, &id("a/f"), &Work::new(u64::MAX)).unwrap().unwrap();
        assert_eq!(p.offset, 5);
        assert_eq!(p.prefix(), *blake3::hash(b"hello").as_bytes());
        assert!(claim(&dir, &id("a/f"), &Work::new(u64::MAX)).unwrap().is_none(), "claimed once at a time");
        assert!(claim(&dir, &id("a/g"), &Work::new(u64::MAX)).unwrap().is_none(), "another path is another identity");
        let other_version = PartialId { size: 11, ..id("a/f") };
        assert!(
            claim(&dir, &other_version, &Work::new(u64::MAX)).unwrap().is_none(),
            "another version of the file is not resumed"
        );
        let other_peer = PartialId { peer: "runner-2".into(), ..id("a/f") };
        assert!(claim(&dir, &other_peer, &Work::new(u64::MAX)).unwrap().is_none(), "another sender never gets it");
        assert_eq!(list(&dir, "runner-1"), [id("a/f")]);
        assert!(list(&dir, "runner-2").is_empty());
        assert_eq!(expire(&dir, Duration::ZERO), 0, "a claimed partial is not expired");
        drop(p);
        assert_eq!(expire(&dir, Duration::from_secs(3600)), 0, "a fresh one is kept");
        assert_eq!(expire(&dir, Duration::ZERO), 1);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0, "data and description are both gone");
    }

    #[test]
    fn one_copy_per_sender_and_path_and_a_quota_per_sender() {
        let t = tempfile::tempdir().unwrap();
        let dir = DirFd::open_path(t.path()).unwrap();
        // A newer version takes the older one's place.
        let v1 = id("a/f");
        create(&dir, &v1).unwrap().unwrap().write_all(b"version one").unwrap();
        let v2 = PartialId { mtime_secs: 99, ..id("a/f") };
        create(&dir, &v2).unwrap().unwrap().write_all(b"two").unwrap();
        assert_eq!(list(&dir, "runner-1"), std::slice::from_ref(&v2));
        assert!(claim(&dir, &v1, &Work::new(u64::MAX)).unwrap().is_none());
        assert_eq!(claim(&dir, &v2, &Work::new(u64::MAX)).unwrap().unwrap().offset, 3);
        // The quota deletes the sender's oldest copies first.
        create(&dir, &id("b")).unwrap().unwrap().write_all(&[0; 100]).unwrap();
        assert!(make_room(&dir, "runner-1", 50, 160), "a/f (3) + b (100) + 50 fit 160");
        assert!(make_room(&dir, "runner-1", 100, 110), "the oldest copies go to make room");
        assert!(list(&dir, "runner-1").len() < 2);
        assert!(!make_room(&dir, "runner-1", 500, 110), "a file larger than the quota is not kept");
        assert!(make_room(&dir, "runner-2", 100, 110), "another sender has its own quota");
    }
}

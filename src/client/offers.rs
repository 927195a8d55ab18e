//! What a pull's destination already holds, offered to the server before
//! the `GET`s so it can skip files that are there and continue partial
//! copies: only what the pull would overwrite, within the protocol's bounds.

use std::collections::{HashMap, HashSet};

use crate::partial::{self, Partial};
use crate::protocol::{MAX_OFFER_BYTES, MAX_OFFERS, Offer, WirePath};
use crate::store::Root;
use crate::walk::Item;

/// Smallest local file a pull of the server's root offers as already held.
pub const MIN_ROOT_OFFER: u64 = 64 * 1024;

/// What a pull's destination already holds, offered to the server before
/// the `Get`s.
#[derive(Default)]
pub(super) struct Holdings {
    pub(super) offers: Vec<Offer>,
    /// Bytes of `OFFER` bodies so far: the protocol bounds them.
    offer_bytes: usize,
    /// Partial copies offered, claimed (locked) until their file arrives.
    pub(super) partials: HashMap<WirePath, Partial>,
    /// Whole local files offered, with their BLAKE3.
    pub(super) whole: HashMap<WirePath, [u8; 32]>,
}

impl Holdings {
    /// Looks in `root` for what the `asked` paths would write: partial
    /// copies from `server` (after deleting expired ones), and the files
    /// already there, hashed. Blocking. Best effort: what cannot be read is
    /// simply not offered.
    ///
    /// An offer tells the server a local file's hash, so only files the
    /// pull would overwrite are offered: below the asked paths, for the
    /// root only below the names the server's root holds (`top`), and never
    /// below a dot-name the user did not ask for (`.ssh`, `.env`). For the
    /// root, whose names the server chooses, only files of at least
    /// [`MIN_ROOT_OFFER`] bytes: the hash of a short file (a password, a
    /// token) could be matched against guesses, so such files are simply
    /// sent again.
    pub(super) fn gather(
        root: &Root,
        server: &str,
        asked: &[WirePath],
        top: Option<&HashSet<String>>,
        filter: Option<&crate::walk::Filter>,
    ) -> Holdings {
        let mut held = Holdings::default();
        // What `--exclude` leaves out is not the pull's: not offered (an
        // offer tells the server the file's BLAKE3).
        let within = |p: &WirePath| {
            asked.iter().any(|a| a.file_name().is_none_or(|n| p.components().next() == Some(n)))
                && !filter.is_some_and(|f| f.excludes(p.as_str(), false))
        };
        if let Ok(dir) = root.partial_dir() {
            partial::expire(&dir, partial::DEFAULT_TTL);
            for id in partial::list(&dir, server) {
                let Ok(path) = WirePath::parse(&id.path) else { continue };
                if !within(&path) || !held.has_room(&path) {
                    continue;
                }
                // The client's own copies, of files it asked for: no bound.
                if let Ok(Some(p)) = partial::claim(&dir, &id, &crate::hashes::Work::new(u64::MAX)) {
                    let prefix = p.prefix();
                    held.push(Offer { path: path.clone(), size: id.size, mtime: id.mtime(), offset: p.offset, prefix });
                    held.partials.insert(path, p);
                }
            }
        }
        for a in asked {
            // `x/d` lands as `d`; the root's entries land as themselves.
            let target = a.file_name().map_or(Ok(WirePath::root()), WirePath::parse);
            // Not walked into what the patterns leave out.
            let Some(walk) = target.ok().and_then(|t| root.walk(&t).ok()) else { continue };
            let walk = walk.filtered(filter.cloned(), 0);
            for item in walk {
                let Item::File { rel, dir, name, meta, .. } = item else { continue };
                if !held.has_room(&rel) {
                    return held;
                }
                if !would_receive(&rel, a.is_root(), top) {
                    continue;
                }
                if held.partials.contains_key(&rel) || (a.is_root() && meta.size < MIN_ROOT_OFFER) {
                    continue;
                }
                let Ok(mut f) = dir.open_file(&name) else { continue };
                let mut hasher = blake3::Hasher::new();
                if std::io::copy(&mut f, &mut hasher).ok() != Some(meta.size) {
                    continue;
                }
                let prefix = *hasher.finalize().as_bytes();
                held.push(Offer { path: rel.clone(), size: meta.size, mtime: meta.mtime, offset: meta.size, prefix });
                held.whole.insert(rel, prefix);
            }
        }
        held
    }

    /// True while one more offer for `path` stays within the protocol's
    /// bounds on offers per connection (a server cuts off a client past
    /// them).
    fn has_room(&self, path: &WirePath) -> bool {
        self.offers.len() < MAX_OFFERS && self.offer_bytes + Offer::body_len_for(path) <= MAX_OFFER_BYTES
    }

    fn push(&mut self, o: Offer) {
        self.offer_bytes += o.body_len();
        self.offers.push(o);
    }
}

/// True when a pull of an asked path would write local file `rel` (named
/// from the asked path's last component, or from the root's names): not
/// under a dot-name below what was asked, and for the root, under a name
/// the server has.
fn would_receive(rel: &WirePath, asked_root: bool, top: Option<&HashSet<String>>) -> bool {
    let mut parts = rel.components();
    let first = parts.next().unwrap_or_default();
    let first_ok = !asked_root || (!first.starts_with('.') && top.is_some_and(|t| t.contains(first)));
    first_ok && !parts.any(|c| c.starts_with('.'))
}

//! A pull on a server whose storage is a bucket: the folder asked for is
//! listed in key order (each folder's keys come together, so one chain of
//! ancestors is all that is kept to send each `DIR` once), small objects
//! are fetched a few at a time ahead of the one being sent, and every
//! object is checked, as it is sent, against the BLAKE3 recorded when it
//! was pushed: a store that lost or changed bytes is caught here, and the
//! client gets an `ABORT`, never the wrong bytes under a good hash.

use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tracing::warn;

use super::{Conn, SHUTTING_DOWN};
use crate::budget::Charge;
use crate::error::Result;
use crate::objects::{Bucket, Info, Listed, RANGE, RANGES_IN_FLIGHT, Reading};
use crate::protocol::{CHUNK_LEN, ErrorCode, FileHeader, Frame, Timestamp, WirePath};
use crate::store::StoreError;
use crate::transfer::Held;

/// Objects up to this size are fetched whole, ahead of their turn.
const SMALL: u64 = 256 * 1024;
/// Objects fetched ahead at once.
const AHEAD: usize = 64;
/// Keys listed before the first file is sent, to give the client a total
/// when the whole answer fits.
const COUNT_FIRST: usize = 10_000;

/// Memory a key counted first holds besides its name.
const LISTED_COST: usize = 64;

fn listed_len(l: &Listed) -> usize {
    match l {
        Listed::File(p, _) | Listed::Folder(p) => p.as_str().len(),
        Listed::Invalid(raw) => raw.len(),
    }
}

/// A listed key, with the object's bytes when it was small enough to fetch
/// ahead (and the memory they hold, charged to the client's share).
enum Next {
    File(WirePath, Option<(Reading, Charge)>),
    Folder(WirePath),
    Invalid(String),
}

impl Conn {
    /// Answers a `GET`: one file, or a folder and everything under it.
    pub(super) async fn get_objects(&mut self, b: Bucket, path: WirePath) -> Result<()> {
        // A file is read at once (one GET, no HEAD first); not found, it
        // may be a folder.
        if !path.is_root() {
            let rel = relative(&path, &path);
            // As a local walk does: an excluded item yields nothing.
            if self.get_filter.as_ref().is_some_and(|(f, _)| excluded(f, &rel, false))
                && matches!(b.stat(&path).await, Ok(Some(_)))
            {
                return self.w.send(&Frame::Ok).await;
            }
            match b.open_read(&path, 0).await {
                Ok(reading) => {
                    if let Err(e) = self.send_object(&b, &path, &rel, Some(reading)).await? {
                        warn!(path = %path, "pull refused: {}", e.message);
                        return self.w.send(&Frame::Error { code: e.code, message: e.message }).await;
                    }
                    return self.w.send(&Frame::Ok).await;
                }
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return self.answer(&path, "pull", Err(e)).await,
            }
        }
        let mut listing = match b.walk(&path) {
            Ok(l) => self.unfiltered_out(l, &path),
            Err(e) => return self.answer(&path, "pull", Err(e)).await,
        };
        // Keys counted first are held (charged to this client's share) until
        // sent; past the share, counting stops and no total is given.
        let mut first = Vec::new();
        let mut ended = false;
        let mut held = self.budget.try_charge(0);
        while first.len() < COUNT_FIRST {
            match listing.next().await {
                Some(Ok(l)) => {
                    let cost = LISTED_COST + listed_len(&l);
                    first.push(l);
                    if !held.as_mut().is_some_and(|c| c.grow(cost)) {
                        break;
                    }
                }
                Some(Err(e)) => return self.answer(&path, "pull", Err(e)).await,
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if first.is_empty() && !path.is_root() && !b.has_marker(&path).await {
            let e = StoreError::new(ErrorCode::NotFound, format!("{path}: no such file or folder"));
            return self.answer(&path, "pull", Err(e)).await;
        }
        if ended {
            let files = first.iter().filter(|l| matches!(l, Listed::File(..))).count() as u64;
            let bytes = first.iter().map(|l| if let Listed::File(_, s) = l { *s } else { 0 }).sum();
            self.w.send(&Frame::Total { files, bytes }).await?;
        }
        let rest = if ended { stream::empty().boxed() } else { listing };
        let _held = held;
        let keys = stream::iter(first.into_iter().map(Ok)).chain(rest);
        let (budget, bucket) = (self.budget.clone(), b.clone());
        let mut ahead = keys
            .map(move |l| {
                let (budget, b) = (budget.clone(), bucket.clone());
                async move {
                    Ok::<_, StoreError>(match l? {
                        Listed::File(p, size) => {
                            let charge = if size <= SMALL { budget.try_charge(size as usize) } else { None };
                            let read = match charge {
                                Some(charge) => fetch_whole(&b, &p, size).await.map(|r| (r, charge)),
                                None => None,
                            };
                            Next::File(p, read)
                        }
                        Listed::Folder(p) => Next::Folder(p),
                        Listed::Invalid(raw) => Next::Invalid(raw),
                    })
                }
            })
            .buffered(AHEAD);
        let mut sent_dirs: Vec<WirePath> = Vec::new();
        while let Some(next) = ahead.next().await {
            if self.token.is_cancelled() {
                self.stopped_mid_response = true;
                let message = SHUTTING_DOWN.to_owned();
                return self.w.send(&Frame::Error { code: ErrorCode::ShuttingDown, message }).await;
            }
            match next {
                Err(e) => {
                    warn!(path = %path, "pull cut short: {}", e.message);
                    return self.w.send(&Frame::Error { code: e.code, message: e.message }).await;
                }
                Ok(Next::Folder(p)) => self.send_dirs(&path, &p, &mut sent_dirs).await?,
                Ok(Next::File(p, read)) => {
                    if let Some(parent) = p.parent() {
                        self.send_dirs(&path, &parent, &mut sent_dirs).await?;
                    }
                    // The memory fetched ahead is held until the file is sent.
                    let (read, _charge) = read.unzip();
                    let rel = relative(&path, &p);
                    if let Err(e) = self.send_object(&b, &p, &rel, read).await? {
                        self.send_failed(&rel, &e.message).await?;
                    }
                }
                Ok(Next::Invalid(raw)) => {
                    let reason = "its key is not a path xfer can send (empty or '.' components, control characters)";
                    self.w.send(&Frame::Skipped { path: WirePath::lossy(&raw), reason: reason.into() }).await?;
                }
            }
        }
        self.w.send(&Frame::Ok).await
    }

    /// Leaves out of a listing what the client's `FILTER` excludes: a key
    /// whose own path, or one of whose folders, is excluded.
    fn unfiltered_out(
        &self,
        l: BoxStream<'static, std::result::Result<Listed, StoreError>>,
        asked: &WirePath,
    ) -> BoxStream<'static, std::result::Result<Listed, StoreError>> {
        let Some((filter, _)) = &self.get_filter else { return l };
        let (filter, asked) = (filter.clone(), asked.clone());
        l.filter(move |l| {
            let out = match l {
                Ok(Listed::File(p, _)) => excluded(&filter, &relative(&asked, p), false),
                Ok(Listed::Folder(p)) => excluded(&filter, &relative(&asked, p), true),
                _ => false,
            };
            std::future::ready(!out)
        })
        .boxed()
    }

    /// Sends `DIR` for each folder from `asked` down to `dir` not sent yet.
    async fn send_dirs(&mut self, asked: &WirePath, dir: &WirePath, sent: &mut Vec<WirePath>) -> Result<()> {
        let mut want = Vec::new();
        let mut d = Some(dir.clone());
        while let Some(p) = d.filter(|p| !p.is_root() && p.starts_with(asked)) {
            d = p.parent();
            want.push(p);
        }
        want.reverse();
        let same = sent.iter().zip(&want).take_while(|(a, b)| a == b).count();
        sent.truncate(same);
        for p in want.into_iter().skip(same) {
            let path = relative(asked, &p);
            self.w.send(&Frame::Dir { path, mode: 0o755, mtime: Timestamp::default() }).await?;
            sent.push(p);
        }
        Ok(())
    }

    /// Sends the object `p` as `rel` (from `read` when it was fetched
    /// ahead), or only the rest of it when the client offered a prefix of
    /// this very version. `Err` inside: nothing was sent, and why.
    async fn send_object(
        &mut self,
        b: &Bucket,
        p: &WirePath,
        rel: &WirePath,
        read: Option<Reading>,
    ) -> Result<std::result::Result<(), StoreError>> {
        let started = Instant::now();
        let held = self.offers.get(rel).map(|(h, _)| h.clone());
        let mut reading = match read {
            Some(r) => r,
            None => match b.open_read(p, 0).await {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            },
        };
        let mut info = reading.info.clone();
        let (offset, hasher, carry) = match resumable(&held, &info) {
            Some(offset) => match hash_prefix(&mut reading.body, offset).await {
                Ok((hasher, carry))
                    if held.as_ref().is_some_and(|k| *hasher.finalize().as_bytes() == k.have.prefix) =>
                {
                    (offset, hasher, carry)
                }
                // Not the client's prefix after all: from the start.
                // (What is sent is then described by this second read: the
                // object may have been replaced in between.)
                _ => match b.open_read(p, 0).await {
                    Ok(r) => {
                        reading = r;
                        info = reading.info.clone();
                        (0, blake3::Hasher::new(), Bytes::new())
                    }
                    Err(e) => return Ok(Err(e)),
                },
            },
            None => (0, blake3::Hasher::new(), Bytes::new()),
        };
        // A large rest is read as ranges in parallel, when the memory for
        // them can be had (else as the one stream already open).
        let mut body = reading.body;
        let mut _ranges_charge = None;
        let start = offset + carry.len() as u64;
        if info.size - start > 2 * RANGE
            && let Some(etag) = reading.etag.clone()
            && let Some(charge) = self.budget.try_charge((RANGE as usize) * (RANGES_IN_FLIGHT + 1))
            && let Ok(ranges) = b.read_ranges(p, etag, start, info.size)
        {
            body = ranges;
            _ranges_charge = Some(charge);
        }
        let header = FileHeader { offset, ..FileHeader::new(rel.clone(), info.size, info.mode, info.mtime) };
        self.w.send(&Frame::File(header)).await?;
        // With the BLAKE3 recorded at push time, that is what the client
        // checks the bytes against: the store's bytes are verified end to
        // end without hashing them here too (a store that changed them is
        // caught by the client). Without one, they are hashed as they go.
        let hasher = if info.blake3.is_some() { None } else { Some(hasher) };
        match self.send_body(body, carry, hasher, info.size - offset, info.blake3).await? {
            Ok(blake3) if info.blake3.is_none_or(|r| r == blake3) => {
                self.w.send(&Frame::End { blake3 }).await?;
                self.log_file("sent", p, info.size - offset, &blake3, started);
            }
            Ok(_) => unreachable!("a recorded BLAKE3 is sent as it is"),
            Err(reason) => {
                warn!(path = %p, "pull of file abandoned: {reason}");
                self.w.send(&Frame::Abort { reason }).await?;
            }
        }
        Ok(Ok(()))
    }

    /// Sends `len` bytes: `carry`, then the body, hashing them with
    /// `hasher` (without one, `recorded` is their hash). The hash, or why
    /// the file must be abandoned.
    async fn send_body(
        &mut self,
        mut body: BoxStream<'static, std::result::Result<Bytes, StoreError>>,
        carry: Bytes,
        mut hasher: Option<blake3::Hasher>,
        len: u64,
        recorded: Option<[u8; 32]>,
    ) -> Result<std::result::Result<[u8; 32], String>> {
        let mut sent = 0u64;
        let mut next = Some(Ok(carry));
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => match body.next().await {
                    Some(c) => c,
                    None => break,
                },
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(Err(format!("the store failed while it was being read: {}", e.message))),
            };
            sent += chunk.len() as u64;
            if sent > len {
                return Ok(Err("the object grew while it was being sent".into()));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            for piece in chunk.chunks(CHUNK_LEN) {
                self.w.send_data(piece).await?;
            }
        }
        if sent != len {
            return Ok(Err("the object shrank while it was being sent".into()));
        }
        Ok(Ok(match (hasher, recorded) {
            (Some(h), _) => *h.finalize().as_bytes(),
            (None, Some(r)) => r,
            (None, None) => unreachable!("no hasher only with a recorded hash"),
        }))
    }
}

/// A small object read whole (`None` if it cannot be: it is then read as
/// any other, in its turn, and fails there if it must).
async fn fetch_whole(b: &Bucket, p: &WirePath, charged: u64) -> Option<Reading> {
    let mut r = b.open_read(p, 0).await.ok()?;
    // Replaced by a larger object since it was listed: read in its turn.
    if r.info.size > charged {
        return None;
    }
    let mut whole = Vec::with_capacity(r.info.size as usize);
    while let Some(chunk) = r.body.next().await {
        whole.extend_from_slice(&chunk.ok()?);
    }
    r.body = stream::once(std::future::ready(Ok(Bytes::from(whole)))).boxed();
    Some(r)
}

/// The offset to resume the client's copy from: only a prefix of this
/// very version (same size and mtime), shorter than the whole.
fn resumable(held: &Option<Held>, info: &Info) -> Option<u64> {
    let k = held.as_ref()?;
    (k.size == info.size && k.mtime == info.mtime && k.have.offset > 0 && k.have.offset < info.size)
        .then_some(k.have.offset)
}

/// Hashes the first `n` bytes of `body`; what it read past them comes back.
async fn hash_prefix(
    body: &mut BoxStream<'static, std::result::Result<Bytes, StoreError>>,
    n: u64,
) -> std::result::Result<(blake3::Hasher, Bytes), StoreError> {
    let mut hasher = blake3::Hasher::new();
    let mut done = 0u64;
    while done < n {
        let Some(chunk) = body.next().await else { break };
        let chunk = chunk?;
        let take = (n - done).min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..take]);
        done += take as u64;
        if done == n {
            return Ok((hasher, chunk.slice(take..)));
        }
    }
    Err(StoreError::new(ErrorCode::Integrity, "the object is shorter than the offered prefix"))
}

/// `p` as a `GET` of `asked` names it: from the asked item's own name on
/// (`GET x/d` yields `d/…`), as a local root's walk does.
fn relative(asked: &WirePath, p: &WirePath) -> WirePath {
    match asked.parent().filter(|d| !d.is_root()) {
        Some(parent) => p
            .as_str()
            .strip_prefix(parent.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| WirePath::parse(rest).ok())
            .unwrap_or_else(|| p.clone()),
        None => p.clone(),
    }
}

/// True when `filter` excludes `p` or one of the folders above it.
fn excluded(filter: &crate::walk::Filter, p: &WirePath, is_dir: bool) -> bool {
    let mut d = p.parent();
    while let Some(dir) = d.filter(|d| !d.is_root()) {
        if filter.excludes(dir.as_str(), true) {
            return true;
        }
        d = dir.parent();
    }
    filter.excludes(p.as_str(), is_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> WirePath {
        WirePath::parse(s).unwrap()
    }

    #[test]
    fn paths_are_named_from_the_asked_item_on() {
        assert_eq!(relative(&w("dist/app.bin"), &w("dist/app.bin")), w("app.bin"));
        assert_eq!(relative(&w("a/dist"), &w("a/dist/x/y")), w("dist/x/y"));
        assert_eq!(relative(&w("dist"), &w("dist/x")), w("dist/x"));
        assert_eq!(relative(&WirePath::root(), &w("dist/x")), w("dist/x"));
    }
}

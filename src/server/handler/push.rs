//! A push, on the server: `PROBE`s answered (what the server holds of each
//! file, hashed once per version and within the connection's allowance),
//! files received into staging, and group commit: many verified files made
//! durable and installed with two filesystem syncs, then answered in
//! request order.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::Conn;
use crate::auth::Perm;
use crate::budget::{Budget, Charge};
use crate::error::{Error, Result};
use crate::hashes::Work;
use crate::meter::Meter;
use crate::partial::{PartialId, RESUMABLE_MIN};
use crate::progress::human_bytes;
use crate::protocol::{ErrorCode, FileHeader, Frame, FrameError, Have, Timestamp, WirePath};
use crate::server::storage::Storage;
use crate::store::{self, GroupSize, Resume, StoreError, Verified};
use crate::transfer::{self, FileOutcome, Target, blocking};

/// Bytes read ahead, while probes are answered, to notice a client that
/// has left.
const WATCH_AHEAD: usize = 64 * 1024;

/// Probes answered together at most (one blocking call for all).
const MAX_PROBES: usize = 1024;

/// A `Probe`'s path, size and mtime.
type Probe = (WirePath, u64, Timestamp);

/// What goes out at the next group commit, in request order.
pub(super) enum Reply {
    /// `STORED` (or `ERROR`) once the file is installed.
    File(Pending),
    /// A reply that needs nothing installed but must not overtake the
    /// files before it (a `HAVE`).
    Ready(Frame),
    /// `OK` for a folder just created, once the group commit made it
    /// durable.
    Folder(WirePath),
    /// `STORED` (or `ERROR`) once the bucket completed the upload.
    #[cfg(feature = "s3")]
    Object(super::objects::Completing),
}

/// What a queued reply becomes once its group is committed.
pub(super) enum Answer {
    File(u64, [u8; 32], Instant),
    Now(Frame),
    Folder(WirePath),
    #[cfg(feature = "s3")]
    Object(super::objects::Completing),
}

/// A received, verified file awaiting its group commit.
pub(super) struct Pending {
    staged: Verified,
    size: u64,
    blake3: [u8; 32],
    started: Instant,
    /// The memory budget a file held in memory uses until its commit.
    charge: Option<Charge>,
}

/// Payloads longer than this are not received while replies wait.
pub(super) const LONG_PAYLOAD: u64 = 1 << 20;

/// Cancels a connection's hashing when the connection ends.
pub(super) struct CancelOnDrop(pub(super) Arc<Work>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A small verified file stays in memory until its group commit only while
/// the server's memory budget allows; past it, it is written out now and
/// waits on disk, holding no memory.
async fn hold(budget: Budget, v: Verified) -> std::result::Result<(Verified, Option<Charge>), StoreError> {
    match v.in_memory() {
        0 => Ok((v, None)),
        n => match budget.try_charge(n) {
            Some(charge) => Ok((v, Some(charge))),
            None => blocking(move || v.write_out()).await.map(|v| (v, None)),
        },
    }
}

impl Conn {
    /// True when a file awaiting its group commit would be installed at
    /// `path` or at a folder above it.
    pub(super) fn batch_holds_file_on(&self, path: &WirePath) -> bool {
        self.batch.iter().any(|r| match r {
            Reply::File(p) => path.starts_with(p.staged.path()),
            Reply::Ready(_) | Reply::Folder(..) => false,
            #[cfg(feature = "s3")]
            Reply::Object(_) => false,
        })
    }

    /// Answers a `Probe`, and the probes buffered right behind it, with one
    /// blocking call for all: for each, the partial copy this client left
    /// of this version of the file (claimed until its `File`), and the hash
    /// of a complete copy of the same size, shown only to clients allowed
    /// to read it.
    pub(super) async fn probe(&mut self, path: WirePath, size: u64, mtime: Timestamp) -> Result<()> {
        let (probes, bad) = self.probes_after((path, size, mtime)).await?;
        let peer = self.names.first().cloned().unwrap_or_default();
        let mut asks = Vec::with_capacity(probes.len());
        for (path, size, mtime) in probes {
            let id = PartialId::new(&peer, &path, size, mtime);
            // A copy this connection holds already for the same version is
            // offered again as it is, not claimed and hashed again.
            let held = self.claims.remove(&path).filter(|c| c.id == id);
            // A probe is answered as the push it announces would be: a
            // refusal for a path no push may write.
            let allowed = self.authorize(Perm::Write, &path).and_then(|()| self.shared.storage.check_reserved(&path));
            let readable = self.authorize(Perm::Read, &path).is_ok();
            asks.push((path, size, id, allowed, readable, held));
        }
        let root = match &self.shared.storage {
            Storage::Local(root) => root.clone(),
            #[cfg(feature = "s3")]
            Storage::Objects(b) => {
                let asks = asks.into_iter().map(|(p, s, id, allowed, readable, _)| (p, s, id, allowed, readable));
                self.probe_objects(b.clone(), asks.collect()).await?;
                return self.after_probes(bad).await;
            }
        };
        let work = self.work.clone();
        let task = blocking(move || {
            asks.into_iter()
                .map(|(path, size, id, allowed, readable, held)| {
                    let found = allowed.map(|()| {
                        let complete = if readable { root.hash_if_size(&path, size, &work) } else { None };
                        let partial = match held {
                            Some(p) => Some(p),
                            None if size >= RESUMABLE_MIN => root.claim_partial(&id, &work).ok().flatten(),
                            None => None,
                        };
                        (complete, partial)
                    });
                    (path, found)
                })
                .collect::<Vec<_>>()
        });
        tokio::pin!(task);
        let answers = tokio::select! {
            answers = &mut task => answers,
            // Hashing for a client that has gone is wasted: stop it.
            () = self.r.closed(WATCH_AHEAD) => {
                self.work.cancel();
                task.await
            }
        };
        for (path, found) in answers {
            let frame = match found {
                Err(e) => {
                    warn!(path = %path, "push refused: {}", e.message);
                    Frame::Error { code: e.code, message: e.message }
                }
                Ok((complete, partial)) => {
                    let mut have = Have { complete, ..Have::default() };
                    if let Some(partial) = partial {
                        (have.offset, have.prefix) = (partial.offset, partial.prefix());
                        info!(path = %path, offset = partial.offset, "offering a partial copy for resume");
                        self.claims.insert(path, partial);
                    }
                    Frame::Have(have)
                }
            };
            self.reply_in_order(frame).await?;
        }
        self.after_probes(bad).await
    }

    /// Refuses the bad path that ended a run of probes, if one did.
    async fn after_probes(&mut self, bad: Option<FrameError>) -> Result<()> {
        match bad {
            Some(e) => {
                self.commit_batch().await?;
                self.refuse_bad_path(e).await
            }
            None => Ok(()),
        }
    }

    /// `first` and the whole `Probe` frames buffered right behind it (up
    /// to [`MAX_PROBES`]), and the bad path that ended the run, if any.
    pub(super) async fn probes_after(&mut self, first: Probe) -> Result<(Vec<Probe>, Option<FrameError>)> {
        let mut probes = vec![first];
        while probes.len() < MAX_PROBES && self.r.has_probe() {
            match self.r.read_frame().await {
                Ok(Some(Frame::Probe { path, size, mtime })) => probes.push((path, size, mtime)),
                Err(Error::Frame { error: e @ FrameError::BadPath { .. }, .. }) => return Ok((probes, Some(e))),
                Err(e) => return Err(e),
                Ok(_) => unreachable!("has_probe() saw a whole Probe frame"),
            }
        }
        Ok((probes, None))
    }

    /// How to stage a pushed file: continuing the partial copy offered for
    /// it, as a new partial copy, or (small files, streams) not resumable.
    pub(super) fn resume_for(&mut self, h: &FileHeader) -> Result<(Resume, blake3::Hasher)> {
        let claim = self.claims.remove(&h.path);
        if h.offset > 0 {
            return match claim {
                Some(c) if c.continued_by(h) => {
                    let hasher = c.hasher.clone();
                    Ok((Resume::From(Box::new(c)), hasher))
                }
                _ => Err(Error::protocol(
                    self.r.peer(),
                    format!("{}: FILE starts at offset {}, which this server did not offer", h.path, h.offset),
                )),
            };
        }
        drop(claim); // the client starts over: release it before replacing it
        let resume = match h.known_size() {
            Some(size) if size >= RESUMABLE_MIN => {
                let peer = self.names.first().cloned().unwrap_or_default();
                Resume::Fresh(PartialId::new(&peer, &h.path, size, h.mtime))
            }
            _ => Resume::No,
        };
        Ok((resume, blake3::Hasher::new()))
    }

    /// Whether this client may push `h` here: policy, `--read-only`, names
    /// and `--max-size`.
    pub(super) fn push_allowed(&mut self, h: &FileHeader) -> std::result::Result<(), StoreError> {
        self.authorize(Perm::Write, &h.path)?;
        self.case_names.check(&h.path)?;
        let max = self.shared.max_size.unwrap_or(u64::MAX);
        match h.known_size() {
            Some(size) if size > max => Err(StoreError {
                code: ErrorCode::TooLarge,
                message: format!(
                    "{}: {} is larger than this server's --max-size of {}",
                    h.path,
                    human_bytes(size),
                    human_bytes(max)
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Receives one pushed file.
    pub(super) async fn put(&mut self, h: FileHeader) -> Result<()> {
        let root = match &self.shared.storage {
            Storage::Local(root) => root.clone(),
            #[cfg(feature = "s3")]
            Storage::Objects(b) => return self.put_object(b.clone(), h).await,
        };
        let started = Instant::now();
        let size = h.known_size();
        let max = self.shared.max_size.unwrap_or(u64::MAX);
        let (resume, prefix) = self.resume_for(&h)?;
        let staged = match self.push_allowed(&h) {
            Err(e) => Err(e),
            Ok(()) => {
                let p = h.path.clone();
                let near = self.batch.iter().rev().find_map(|r| match r {
                    Reply::File(pending) => pending.staged.near(),
                    _ => None,
                });
                Target::new(size, near, move |near| root.stage(&p, size, near, resume)).await
            }
        };
        let target = match staged {
            Ok(s) => s,
            Err(e) => {
                // Answer at once; the payload that follows is read and dropped.
                warn!(path = %h.path, "push refused: {}", e.message);
                self.commit_batch().await?;
                self.w.send(&Frame::Error { code: e.code, message: e.message }).await?;
                return transfer::discard_payload(&mut self.r, &h).await;
            }
        };
        // A long payload is coming: install and answer the files before it
        // first, or the client would wait on their replies (under its idle
        // timeout) for as long as this one takes to arrive.
        if size.is_none_or(|s| s > LONG_PAYLOAD) {
            self.commit_batch().await?;
            self.w.flush().await?;
        }
        if h.offset > 0 {
            info!(path = %h.path, offset = h.offset, "resuming");
        }
        match transfer::receive_deferred(&mut self.r, &h, target, max, &Meter::off(), prefix).await? {
            (FileOutcome::Ok(got), Some(staged)) => {
                let (staged, charge) = match hold(self.budget.clone(), staged).await {
                    Ok(held) => held,
                    Err(e) => {
                        warn!(path = %h.path, "push failed: {}", e.message);
                        self.commit_batch().await?;
                        return self.w.send(&Frame::Error { code: e.code, message: e.message }).await;
                    }
                };
                // Verified; it joins the group that is made durable and
                // installed together, then answered.
                self.batch_size.add(&staged, got.bytes);
                self.batch.push(Reply::File(Pending { staged, size: got.size, blake3: got.blake3, started, charge }));
                // A group is committed when full, and always before the
                // server waits for the client.
                if self.batch_size.full() {
                    self.commit_batch().await?;
                }
                Ok(())
            }
            (FileOutcome::Ok(got), None) => {
                let message = format!("{}: the received file was lost before it could be installed", h.path);
                warn!(path = %h.path, bytes = got.size, "{message}");
                self.commit_batch().await?;
                self.w.send(&Frame::Error { code: ErrorCode::Io, message }).await
            }
            (FileOutcome::Failed { code, message, bytes }, _) => {
                self.bytes += bytes;
                warn!(path = %h.path, bytes, "push failed: {message}");
                self.commit_batch().await?;
                self.w.send(&Frame::Error { code, message }).await
            }
            (FileOutcome::PeerError { message, .. }, _) => {
                Err(Error::protocol(self.r.peer(), format!("client sent an error frame inside a file: {message}")))
            }
        }
    }

    /// Group commit: one filesystem sync makes every pending file's data
    /// durable, the files are renamed into place, one more sync makes the
    /// renames durable, and only then is each answered `STORED`. Two syncs
    /// per group instead of two per file is what makes many small files
    /// fast without weakening what "stored" means.
    pub(super) async fn commit_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // A client revoked while its files arrived gets none installed.
        if let Err(e) = self.refresh() {
            self.batch.clear();
            self.folder_fs.clear();
            self.batch_size = GroupSize::default();
            return Err(e);
        }
        let mut staged = Vec::with_capacity(self.batch.len());
        let mut replies = Vec::with_capacity(self.batch.len());
        let mut charges = Vec::new();
        let folders: Vec<_> = std::mem::take(&mut self.folder_fs).into_iter().map(|(_, d)| d).collect();
        for reply in std::mem::take(&mut self.batch) {
            match reply {
                Reply::File(p) => {
                    staged.push(p.staged);
                    charges.extend(p.charge);
                    replies.push(Answer::File(p.size, p.blake3, p.started));
                }
                Reply::Ready(frame) => replies.push(Answer::Now(frame)),
                Reply::Folder(path) => replies.push(Answer::Folder(path)),
                #[cfg(feature = "s3")]
                Reply::Object(c) => replies.push(Answer::Object(c)),
            }
        }
        self.batch_size = GroupSize::default();
        // A bucket's files complete on their own: nothing to install then.
        let (results, folders_ok) = if staged.is_empty() && folders.is_empty() {
            (Vec::new(), Ok(()))
        } else {
            blocking(move || store::commit_group(staged, &folders)).await
        };
        let mut results = results.into_iter();
        drop(charges); // the memory they cover is free now
        for reply in replies {
            let (size, blake3, started) = match reply {
                Answer::File(size, blake3, started) => (size, blake3, started),
                Answer::Now(frame) => {
                    self.w.send(&frame).await?;
                    continue;
                }
                Answer::Folder(path) => {
                    let r = folders_ok.clone().map_err(|e| StoreError { message: format!("{path}: {e}"), ..e });
                    self.answer(&path, "mkdir", r).await?;
                    continue;
                }
                #[cfg(feature = "s3")]
                Answer::Object(c) => {
                    self.answer_completed(c).await?;
                    continue;
                }
            };
            let (path, r) = results.next().expect("one result per staged file");
            match r {
                Ok(()) => {
                    self.log_file("received", &path, size, &blake3, started);
                    self.w.send(&Frame::Stored { size, blake3 }).await?;
                }
                Err(e) => {
                    warn!(path = %path, "push failed: {}", e.message);
                    self.w.send(&Frame::Error { code: e.code, message: e.message }).await?;
                }
            }
        }
        Ok(())
    }
}

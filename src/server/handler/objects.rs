//! A push on a server whose storage is a bucket. Each file
//! streams into an [`Upload`] (parts in flight while the next arrive),
//! which checks the size and BLAKE3 and only then completes; completions
//! run in the background, several files at once, and are answered
//! `STORED` in request order once the store acknowledged them (the
//! bucket's counterpart of group commit). A connection cut mid-file
//! leaves the parts stored so far, and their BLAKE3 subtrees, in the
//! bucket, for any server on it to resume from.

use std::time::Instant;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Conn;
use super::push::Reply;
use crate::budget::Charge;
use crate::error::{Error, Result};
use crate::meter::Meter;
use crate::objects::{Bucket, IN_FLIGHT, MAX_OBJECT, Resumable, Upload, part_for};
use crate::partial::{PartialId, RESUMABLE_MIN};
use crate::progress::human_bytes;
use crate::protocol::{ErrorCode, FileHeader, Frame, WirePath};
use crate::store::StoreError;
use crate::transfer::{self, Destination, FileOutcome};

/// Longest a push waits for memory for its upload before it is refused.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Files whose completion (a `PUT`, or completing a multipart upload) may
/// be under way at once for one connection, their `STORED` waiting.
const COMPLETIONS_IN_FLIGHT: usize = 64;
/// A partial upload's state not saved again for this long belongs to an
/// attempt that is over: a new upload of the same path may abort it.
const STALE_STATE: std::time::Duration = std::time::Duration::from_secs(120);

/// A partial upload offered to this client, held until its `File`.
pub(super) struct Claim {
    pub(super) id: PartialId,
    pub(super) resumable: Resumable,
}

/// A file whose upload is completing in the background (or a folder whose
/// marker is being stored).
pub(super) struct Completing {
    pub(super) folder: bool,
    pub(super) task: JoinHandle<std::result::Result<(), StoreError>>,
    pub(super) path: WirePath,
    pub(super) size: u64,
    pub(super) blake3: [u8; 32],
    pub(super) started: Instant,
}

impl Conn {
    /// Receives one pushed file into the bucket.
    pub(super) async fn put_object(&mut self, b: Bucket, h: FileHeader) -> Result<()> {
        let started = Instant::now();
        let max = self.shared.max_size.unwrap_or(u64::MAX);
        let claim = self.object_claims.remove(&h.path);
        let resume = match (h.offset, claim) {
            // The client starts over: the upload it was offered goes now
            // (its state is about to be replaced, and with it its record).
            (0, Some(c)) => {
                b.forget_partial(&c.id, std::time::Duration::ZERO).await;
                None
            }
            (0, None) => None,
            (offset, Some(c)) if c.resumable.offset == offset && c.id == self.partial_id(&h) => Some(c),
            (offset, _) => {
                return Err(Error::protocol(
                    self.r.peer(),
                    format!("{}: FILE starts at offset {offset}, which this server did not offer", h.path),
                ));
            }
        };
        let started_upload = match (self.push_allowed(&h), h.known_size()) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(size)) if size > MAX_OBJECT => Err(StoreError {
                code: ErrorCode::TooLarge,
                message: format!(
                    "{}: {} is larger than an object store takes ({})",
                    h.path,
                    human_bytes(size),
                    human_bytes(MAX_OBJECT)
                ),
            }),
            (Ok(()), _) => self.start_upload(&b, &h, resume).await,
        };
        let (upload, charge) = match started_upload {
            Ok(x) => x,
            Err(e) => {
                warn!(path = %h.path, "push refused: {}", e.message);
                self.commit_batch().await?;
                self.w.send(&Frame::Error { code: e.code, message: e.message }).await?;
                return transfer::discard_payload(&mut self.r, &h).await;
            }
        };
        // As for a local root: replies owed go out before a long payload.
        if h.known_size().is_none_or(|s| s > super::push::LONG_PAYLOAD) {
            self.commit_batch().await?;
            self.w.flush().await?;
        }
        if h.offset > 0 {
            info!(path = %h.path, offset = h.offset, "resuming");
        }
        let (tx, rx) = oneshot::channel();
        let sink = ObjectSink { upload: Some((upload, charge)), done: Some(tx) };
        let meter = Meter::off();
        let outcome = transfer::receive_into(&mut self.r, &h, Some(sink), max, &meter, blake3::Hasher::new());
        match outcome.await? {
            FileOutcome::Ok(got) => {
                let Ok((upload, charge)) = rx.await else {
                    let message = format!("{}: the received file was lost before it could be stored", h.path);
                    return self.reply_in_order(Frame::Error { code: ErrorCode::Io, message }).await;
                };
                // A client revoked while its file arrived gets nothing stored.
                if let Err(e) = self.refresh() {
                    upload.abort().await;
                    return Err(e);
                }
                // Versions of one path complete in the order they came.
                if self.completing_on(&h.path) {
                    self.commit_batch().await?;
                }
                let task = tokio::spawn(async move {
                    let r = upload.finish(got.size, got.blake3).await;
                    drop(charge); // the memory the upload held is free now
                    r
                });
                let (path, size, blake3) = (h.path.clone(), got.size, got.blake3);
                let done = Completing { folder: false, task, path, size, blake3, started };
                self.batch.push(Reply::Object(done));
                if self.completing() >= COMPLETIONS_IN_FLIGHT {
                    self.answer_oldest().await?;
                }
                Ok(())
            }
            FileOutcome::Failed { code, message, bytes } => {
                self.bytes += bytes;
                warn!(path = %h.path, bytes, "push failed: {message}");
                self.reply_in_order(Frame::Error { code, message }).await
            }
            FileOutcome::PeerError { message, .. } => {
                Err(Error::protocol(self.r.peer(), format!("client sent an error frame inside a file: {message}")))
            }
        }
    }

    /// Creates the folder `p` in the background (a `HEAD`, then its marker
    /// object), its `OK` queued in order like a file's `STORED`.
    pub(super) async fn mkdir_object(&mut self, b: Bucket, p: WirePath) -> Result<()> {
        let task = {
            let p = p.clone();
            tokio::spawn(async move { b.mkdir(&p).await })
        };
        let done = Completing { folder: true, task, path: p, size: 0, blake3: [0; 32], started: Instant::now() };
        self.batch.push(Reply::Object(done));
        if self.completing() >= COMPLETIONS_IN_FLIGHT {
            self.answer_oldest().await?;
        }
        Ok(())
    }

    /// Answers a file whose upload was completing, once it has.
    pub(super) async fn answer_completed(&mut self, c: Completing) -> Result<()> {
        let r = match c.task.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::new(ErrorCode::Io, format!("{}: the upload task failed: {e}", c.path))),
        };
        if c.folder {
            return self.w.send(&reply_frame(&c.path, r)).await;
        }
        match r {
            Ok(()) => {
                self.log_file("received", &c.path, c.size, &c.blake3, c.started);
                self.w.send(&Frame::Stored { size: c.size, blake3: c.blake3 }).await
            }
            Err(e) => {
                warn!(path = %c.path, "push failed: {}", e.message);
                self.w.send(&Frame::Error { code: e.code, message: e.message }).await
            }
        }
    }

    /// Makes room for one more completion: waits for the oldest, then
    /// answers it and whatever follows it that is ready, in order. (Waiting
    /// for them all would stall the client's window on the slowest.)
    async fn answer_oldest(&mut self) -> Result<()> {
        let mut waited = false;
        while let Some(first) = self.batch.first() {
            let ready = match first {
                Reply::Ready(_) => true,
                Reply::Object(c) => !waited || c.task.is_finished(),
                _ => false,
            };
            if !ready {
                break;
            }
            match self.batch.remove(0) {
                Reply::Ready(frame) => self.w.send(&frame).await?,
                Reply::Object(c) => {
                    waited = true;
                    self.answer_completed(c).await?;
                }
                _ => unreachable!("checked above"),
            }
        }
        Ok(())
    }

    /// True when an upload of `p` is completing.
    fn completing_on(&self, p: &WirePath) -> bool {
        self.batch.iter().any(|r| matches!(r, Reply::Object(c) if c.path == *p))
    }

    /// Completions under way.
    fn completing(&self) -> usize {
        self.batch.iter().filter(|r| matches!(r, Reply::Object(_))).count()
    }

    fn partial_id(&self, h: &FileHeader) -> PartialId {
        let peer = self.names.first().cloned().unwrap_or_default();
        PartialId::new(&peer, &h.path, h.known_size().unwrap_or(0), h.mtime)
    }

    /// Starts (or continues) the upload of `h`, with the memory it will
    /// hold charged to this client's share of the budget.
    async fn start_upload(
        &mut self,
        b: &Bucket,
        h: &FileHeader,
        resume: Option<Claim>,
    ) -> std::result::Result<(Upload, Charge), StoreError> {
        let (charge, parts) = self.wait_for_memory(h.known_size()).await?;
        let upload = match resume {
            Some(c) => b.resume(c.id, c.resumable, h.mode, h.mtime)?,
            None => {
                let id = h.known_size().filter(|&s| s >= RESUMABLE_MIN).map(|_| self.partial_id(h));
                if let Some(id) = &id {
                    // An older attempt's upload would lose its only record.
                    b.forget_partial(id, STALE_STATE).await;
                }
                let up = b.upload(&h.path, h.mode, h.mtime, id)?;
                match h.known_size() {
                    Some(size) => up.sized_for(size),
                    None => up,
                }
            }
        };
        Ok((upload.with_parts_in_flight(parts), charge))
    }

    /// The memory for an upload, waiting for it while other transfers hold
    /// it: the oldest completion of this connection first, then (bounded)
    /// other connections. The client's bytes wait in the connection.
    async fn wait_for_memory(&mut self, size: Option<u64>) -> std::result::Result<(Charge, usize), StoreError> {
        let deadline = tokio::time::Instant::now() + MEMORY_WAIT;
        let io = |e: Error| StoreError::new(ErrorCode::Io, e.to_string());
        // What could never fit in this client's share is refused at once.
        let part = size.map_or(crate::objects::PART, part_for);
        let least = size.filter(|&s| s <= part as u64).map_or(2 * part, |s| s as usize);
        if least > self.budget.limit() {
            return Err(StoreError::new(
                ErrorCode::Busy,
                format!(
                    "this file needs {} of the server's memory for its upload; its --max-memory gives each client {}",
                    human_bytes(least as u64),
                    human_bytes(self.budget.limit() as u64)
                ),
            ));
        }
        loop {
            if let Some(x) = self.upload_memory(size) {
                return Ok(x);
            }
            if self.completing() > 0 {
                self.answer_oldest().await.map_err(io)?;
                continue;
            }
            if tokio::time::Instant::now() >= deadline || self.token.is_cancelled() {
                return Err(busy());
            }
            // Replies owed go out before waiting.
            self.commit_batch().await.map_err(io)?;
            self.w.flush().await.map_err(io)?;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The memory an upload of `size` bytes holds (a small file whole until
    /// its `PUT`; a large one, the part filling and those in flight), with
    /// as many parts in flight as this client's share allows.
    fn upload_memory(&self, size: Option<u64>) -> Option<(Charge, usize)> {
        let part = size.map_or(crate::objects::PART, part_for);
        if let Some(s) = size.filter(|&s| s <= part as u64) {
            return self.budget.try_charge(s as usize).map(|c| (c, 1));
        }
        (1..=IN_FLIGHT).rev().find_map(|parts| self.budget.try_charge(part * (parts + 1)).map(|c| (c, parts)))
    }
}

/// `OK`, or the error, for a request without payload.
fn reply_frame(p: &WirePath, r: std::result::Result<(), StoreError>) -> Frame {
    match r {
        Ok(()) => Frame::Ok,
        Err(e) => {
            warn!(path = %p, "mkdir refused: {}", e.message);
            Frame::Error { code: e.code, message: e.message }
        }
    }
}

fn busy() -> StoreError {
    StoreError::new(
        ErrorCode::Busy,
        "the server's memory for uploads (--max-memory) is taken by other transfers; retry later",
    )
}

/// Where a pushed file's bytes go: its upload, with the memory it holds.
/// Once the payload is whole, the upload is handed back (the caller
/// completes it, which checks the BLAKE3); dropped mid-file (the connection
/// was cut), it is suspended: the parts in flight are let finish and
/// recorded, for a resume. The memory stays charged until the upload is
/// done with, wherever that happens.
struct ObjectSink {
    upload: Option<(Upload, Charge)>,
    done: Option<oneshot::Sender<(Upload, Charge)>>,
}

impl Destination for ObjectSink {
    async fn write(&mut self, data: &[u8]) -> std::result::Result<(), StoreError> {
        match self.upload.as_mut() {
            Some((up, _)) => up.write(data).await,
            None => Err(StoreError::new(ErrorCode::Io, "the upload is over")),
        }
    }

    async fn finish(mut self, _: &FileHeader, _: [u8; 32]) -> std::result::Result<(), StoreError> {
        if let (Some(up), Some(done)) = (self.upload.take(), self.done.take()) {
            let _ = done.send(up);
        }
        Ok(())
    }

    fn verifies_itself(&self) -> bool {
        true
    }

    fn discard(mut self) {
        if let Some((up, charge)) = self.upload.take() {
            tokio::spawn(async move {
                up.abort().await;
                drop(charge);
            });
        }
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        if let Some((up, charge)) = self.upload.take() {
            tokio::spawn(async move {
                up.suspend().await;
                drop(charge);
            });
        }
    }
}

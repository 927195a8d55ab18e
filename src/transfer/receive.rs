//! The receiving half: after a `File` header, `Data` frames are hashed and
//! written to a staged file; on `End` the hash is compared with the
//! sender's and only a match is committed under the final name.
//!
//! A failure that leaves the stream in sync (a write error, a hash or size
//! mismatch, an `Abort`) is a [`FileOutcome::Failed`] and the connection goes
//! on; anything else (a cut connection, a frame that makes no sense here) is
//! an `Err` and ends it. Either way the staged file is dropped, which deletes
//! it, so nothing partial ever appears under the final name.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::connection::FrameReader;
use crate::error::{Error, Result};
use crate::meter::Meter;
use crate::progress::human_bytes;
use crate::protocol::{ErrorCode, FileHeader, Frame, UNKNOWN_SIZE};
use crate::store::{Staged, StoreError, Verified};

use super::disk::{DiskWriter, Target};
use super::hex;

/// A file that arrived, verified and committed.
#[derive(Debug, Clone)]
pub struct Received {
    pub size: u64,
    pub blake3: [u8; 32],
    /// Payload bytes that crossed the connection (less than `size` when
    /// the file was resumed from an offset).
    pub bytes: u64,
}

/// How one file ended.
#[derive(Debug, Clone)]
pub enum FileOutcome {
    Ok(Received),
    /// The file failed but the stream is still in sync.
    Failed {
        code: ErrorCode,
        message: String,
        bytes: u64,
    },
    /// The peer sent `Error` instead of the rest of the file (pull only):
    /// it also ends the response this file belonged to.
    PeerError {
        code: ErrorCode,
        message: String,
    },
}

/// Where a received payload goes: a staged file (committed only once the
/// hash matches), or a stream such as standard output.
pub trait Destination: Send {
    /// Takes the next payload bytes.
    fn write(&mut self, data: &[u8]) -> impl Future<Output = std::result::Result<(), StoreError>> + Send;
    /// Called once the whole payload arrived and verified (or, for a
    /// destination that [verifies itself](Destination::verifies_itself),
    /// arrived whole: it then checks `blake3`, the sender's hash).
    fn finish(
        self,
        h: &FileHeader,
        blake3: [u8; 32],
    ) -> impl Future<Output = std::result::Result<(), StoreError>> + Send;
    /// True when the destination hashes what it takes itself (an object
    /// store's upload hashes each part as a BLAKE3 subtree, and a resumed
    /// one holds no hasher state for the bytes before it): the payload is
    /// then not hashed twice, and the check is the destination's.
    fn verifies_itself(&self) -> bool {
        false
    }
    /// Called when the file failed for good (not when the connection was
    /// cut: then it is just dropped, and a partial copy may be kept).
    fn discard(self)
    where
        Self: Sized,
    {
    }
}

/// Receives the payload that follows `h` into a staged file (or, with
/// `None`, only hashing and discarding it, for a file already refused). A
/// payload that grows past `limit` bytes is refused as too large.
pub async fn receive_file<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
    h: &FileHeader,
    staged: Option<Staged>,
    limit: u64,
    meter: &Meter,
) -> Result<FileOutcome> {
    let sink = staged.map(|s| Sink::new(Target::Ready(s), h, None));
    receive_into(r, h, sink, limit, meter, blake3::Hasher::new()).await
}

/// Like [`receive_file`], but a verified file is not installed: it comes
/// back staged, with its mode and mtime applied, for the caller to make
/// durable and install together with others (group commit). For a header
/// with an offset, the target already holds that prefix and `prefix` is
/// the state of its hash.
pub async fn receive_deferred<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
    h: &FileHeader,
    target: Target,
    limit: u64,
    meter: &Meter,
    prefix: blake3::Hasher,
) -> Result<(FileOutcome, Option<Verified>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink = Sink::new(target, h, Some(tx));
    let outcome = receive_into(r, h, Some(sink), limit, meter, prefix).await?;
    Ok((outcome, rx.await.ok()))
}

/// Bytes of a refused file's payload read past its limit, to stay in step
/// with the stream, before the connection is given up instead.
pub const MAX_DRAIN: u64 = 1 << 30;

/// Receives the payload that follows `h` into any [`Destination`]. The
/// payload starts at `h.offset`; `hasher` has hashed the bytes before it.
pub async fn receive_into<R: AsyncRead + Unpin, D: Destination>(
    r: &mut FrameReader<R>,
    h: &FileHeader,
    mut sink: Option<D>,
    limit: u64,
    meter: &Meter,
    mut hasher: blake3::Hasher,
) -> Result<FileOutcome> {
    meter.start(h.path.as_str(), h.known_size());
    meter.resumed(h.offset);
    let mut got: u64 = h.offset;
    let mut failure: Option<StoreError> = None;
    let self_checked = sink.as_ref().is_some_and(D::verifies_itself);
    let discard = |sink: &mut Option<D>| {
        if let Some(s) = sink.take() {
            s.discard();
        }
    };
    loop {
        let frame = match r.read_frame().await {
            Ok(f) => f,
            // A sender that breaks the protocol gets no partial copy kept
            // for it (a cut or stalled connection does: that is resume).
            Err(e @ (Error::Frame { .. } | Error::Protocol { .. })) => {
                discard(&mut sink);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match frame {
            Some(Frame::Data(d)) => {
                got += d.len() as u64;
                if h.size != UNKNOWN_SIZE && got > h.size {
                    discard(&mut sink);
                    return Err(Error::protocol(
                        r.peer(),
                        format!("{}: more payload than the {} bytes announced", h.path, h.size),
                    ));
                }
                // A file that already failed is read only to stay in step
                // with the stream, and only so far: a peer that goes on and
                // on (a stream with no end) is cut off.
                if sink.is_none() && got > limit.saturating_add(MAX_DRAIN) {
                    return Err(Error::protocol(
                        r.peer(),
                        format!("{}: stopped reading a refused file after {} more", h.path, human_bytes(MAX_DRAIN)),
                    ));
                }
                if failure.is_none() && !self_checked {
                    hasher.update(&d); // a failed file's hash is never used
                }
                meter.bytes(d.len() as u64);
                if got > limit && failure.is_none() {
                    let message = format!("{}: larger than the receiver's limit of {}", h.path, human_bytes(limit));
                    failure = Some(StoreError { code: ErrorCode::TooLarge, message });
                    discard(&mut sink);
                }
                if let Some(s) = sink.as_mut()
                    && let Err(e) = s.write(&d).await
                {
                    // Keep reading to stay in sync; the temp file goes.
                    failure = Some(e);
                    discard(&mut sink);
                }
            }
            Some(Frame::End { blake3 }) => {
                // A destination that checks the hash itself vouches for the
                // sender's once its `finish` succeeds.
                let actual = if self_checked && sink.is_some() { blake3 } else { *hasher.finalize().as_bytes() };
                return Ok(finish(h, sink, failure, got, blake3, actual).await);
            }
            Some(Frame::Abort { reason }) => {
                discard(&mut sink);
                return Ok(FileOutcome::Failed {
                    code: ErrorCode::Aborted,
                    message: format!("{}: the sender abandoned it: {}", h.path, crate::text::Safe(&reason)),
                    bytes: got - h.offset,
                });
            }
            Some(Frame::Error { code, message }) => {
                discard(&mut sink);
                return Ok(FileOutcome::PeerError { code, message });
            }
            Some(other) => {
                discard(&mut sink);
                return Err(Error::protocol(
                    r.peer(),
                    format!("unexpected {} frame inside the payload of {}", other.name(), h.path),
                ));
            }
            None => {
                return Err(Error::ConnectionLost {
                    peer: r.peer().to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("closed during the payload of {}", h.path),
                    ),
                });
            }
        }
    }
}

async fn finish<D: Destination>(
    h: &FileHeader,
    sink: Option<D>,
    failure: Option<StoreError>,
    got: u64,
    expected: [u8; 32],
    actual: [u8; 32],
) -> FileOutcome {
    let bytes = got - h.offset;
    let problem = if let Some(e) = failure {
        Some((e.code, e.message))
    } else if h.size != UNKNOWN_SIZE && got != h.size {
        let message = format!("{}: {got} payload bytes arrived, but {} were announced", h.path, h.size);
        Some((ErrorCode::Integrity, message))
    } else if expected != actual {
        let (theirs, ours) = (hex(&expected), hex(&actual));
        let message = format!("{}: BLAKE3 mismatch: the sender had {theirs}, the receiver got {ours}", h.path);
        Some((ErrorCode::Integrity, message))
    } else {
        None
    };
    if let Some((code, message)) = problem {
        if let Some(s) = sink {
            s.discard();
        }
        return FileOutcome::Failed { code, message, bytes };
    }
    if let Some(s) = sink
        && let Err(e) = s.finish(h, expected).await
    {
        return FileOutcome::Failed { code: e.code, message: e.message, bytes };
    }
    FileOutcome::Ok(Received { size: got, blake3: actual, bytes })
}

/// Reads and drops the payload of a file refused at its header.
pub async fn discard_payload<R: AsyncRead + Unpin>(r: &mut FrameReader<R>, h: &FileHeader) -> Result<()> {
    match receive_into::<R, Sink>(r, h, None, 0, &Meter::off(), blake3::Hasher::new()).await? {
        FileOutcome::PeerError { message, .. } => Err(Error::protocol(r.peer(), message)),
        _ => Ok(()),
    }
}

/// A staged file being written (by a background thread for large files),
/// committed or handed back once the payload verified.
struct Sink {
    disk: DiskWriter,
    /// With group commit: where the verified, uninstalled file goes.
    defer: Option<tokio::sync::oneshot::Sender<Verified>>,
}

impl Sink {
    fn new(target: Target, h: &FileHeader, defer: Option<tokio::sync::oneshot::Sender<Verified>>) -> Sink {
        Sink { disk: DiskWriter::new(target, h.offset, h.known_size()), defer }
    }
}

impl Destination for Sink {
    async fn write(&mut self, data: &[u8]) -> std::result::Result<(), StoreError> {
        self.disk.write(data).await
    }

    async fn finish(self, h: &FileHeader, _: [u8; 32]) -> std::result::Result<(), StoreError> {
        let (mode, mtime) = (h.mode, h.mtime);
        match self.defer {
            // Group commit: hand the verified file back, not yet installed.
            Some(slot) => {
                let _ = slot.send(self.disk.finish_verified(h).await?);
                Ok(())
            }
            None => self.disk.finish(move |staged| staged.commit(mode, mtime)).await,
        }
    }

    fn discard(self) {
        self.disk.discard();
    }
}

/// A stream destination (standard output): bytes flow on as they arrive,
/// so a hash mismatch can only be reported after the fact.
pub struct WriterSink<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> Destination for WriterSink<W> {
    async fn write(&mut self, data: &[u8]) -> std::result::Result<(), StoreError> {
        self.0.write_all(data).await.map_err(|e| StoreError::io(&"standard output", e))
    }

    async fn finish(mut self, _: &FileHeader, _: [u8; 32]) -> std::result::Result<(), StoreError> {
        self.0.flush().await.map_err(|e| StoreError::io(&"standard output", e))
    }
}

//! The sending half: a local file becomes a `File` header, `Data` frames and
//! an `End` trailer carrying the BLAKE3 of exactly the bytes sent.
//!
//! The hash is computed while sending, never in a pass before it, so the
//! first byte leaves at once. If the source changes while it is read (it
//! shrinks, or its size or mtime differ at the end), the file is abandoned
//! with `Abort` instead of being reported as sent.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek};

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::beneath::DirFd;
use crate::budget::Budget;
use crate::connection::FrameWriter;
use crate::error::Result;
use crate::meter::Meter;
use crate::protocol::ErrorCode;
use crate::protocol::{CHUNK_LEN, FileHeader, Frame, Have, Timestamp, UNKNOWN_SIZE, WirePath};
use crate::store::StoreError;
use crate::walk::{Ahead, Item, Meta};

use super::blocking;

/// Bytes read (and hashed) from disk per blocking call, two `Data` frames;
/// a sender holds two such buffers, one read while the other is sent.
const READ_LEN: usize = 2 * CHUNK_LEN;

/// What was sent for one file.
#[derive(Debug, Clone)]
pub struct Sent {
    pub size: u64,
    pub blake3: [u8; 32],
    /// Where the payload started (0, or the receiver's verified prefix).
    pub offset: u64,
}

/// What the receiver said it holds of a file, and for which version of it
/// (the size and mtime the sender announced when it asked).
#[derive(Debug, Clone)]
pub struct Held {
    pub size: u64,
    pub mtime: Timestamp,
    pub have: Have,
}

/// How sending one file ended, when the connection itself survived.
#[derive(Debug, Clone)]
pub enum SendOutcome {
    /// Header, payload and trailer went out; the peer will answer.
    Sent(Sent),
    /// The header and `sent` payload bytes went out, then the file was
    /// abandoned with `Abort`; the peer will answer with an error.
    Aborted { size: u64, sent: u64, reason: String },
    /// The file could not even be opened; nothing was sent for it. `code`
    /// classifies the cause for a peer (permission, vanished...).
    NotStarted { code: ErrorCode, reason: String },
    /// The receiver's complete copy has the same BLAKE3: nothing was sent.
    Same { size: u64, blake3: [u8; 32] },
}

/// Files up to this size are read by the walk's thread as it finds them, so
/// sending one costs no blocking call of its own; at most 256 wait in the
/// channel, so this also bounds the memory the read-ahead holds.
const AHEAD_MAX: u64 = 16 * 1024;

/// Runs a walk on a blocking thread and streams its items, so directory
/// reads (and reads of small files) overlap with the network and memory
/// stays bounded.
///
/// Read-ahead draws on `budget` (a server's, shared by all its connections):
/// when that is spent, files are read when their turn comes instead.
pub fn spawn_walk(items: impl Iterator<Item = Item> + Send + 'static, budget: Budget) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        for mut item in items {
            if let Item::File { dir, name, meta, ahead, .. } = &mut item {
                let charge =
                    (meta.size > 0 && meta.size <= AHEAD_MAX).then(|| budget.try_charge(meta.size as usize)).flatten();
                if let Some(charge) = charge {
                    // On any error the sender opens the file itself and
                    // reports what it finds.
                    *ahead = open(dir, name, true).ok().and_then(|(_, _, a)| a).map(|mut a| {
                        a.charge = Some(charge);
                        Box::new(a)
                    });
                }
            }
            if tx.blocking_send(item).is_err() {
                break; // the receiver gave up (connection failed)
            }
        }
    });
    rx
}

/// The next walk item; flushes `w` first when none is ready, so the peer is
/// never left waiting on bytes that sit in our buffer while we wait on disk.
pub async fn next_item<W: AsyncWrite + Unpin>(
    items: &mut mpsc::Receiver<Item>,
    w: &mut FrameWriter<W>,
) -> Result<Option<Item>> {
    match items.try_recv() {
        Ok(item) => Ok(Some(item)),
        Err(_) => {
            w.flush().await?;
            Ok(items.recv().await)
        }
    }
}

/// Sends the file `name` of folder `dir` as `rel`; `Err` means the
/// connection failed. With `held`, what the receiver holds is checked
/// first: a complete copy with our BLAKE3 means nothing to send, a prefix
/// of our file means sending only the rest. `ahead` is the file's content
/// if the walk already read it.
pub async fn send_file<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    rel: &WirePath,
    dir: &DirFd,
    name: &OsStr,
    meter: &Meter,
    held: Option<&Held>,
    ahead: Option<Box<Ahead>>,
) -> Result<SendOutcome> {
    // Content read ahead is only usable when the receiver holds nothing to
    // compare it with; a small file is then read whole when opened.
    let whole = held.is_none_or(|k| k.have.complete.is_none() && k.have.offset == 0);
    let not_started = |e: std::io::Error| {
        let reason = format!("cannot read {rel}: {e}");
        Ok(SendOutcome::NotStarted { code: StoreError::io(rel, e).code, reason })
    };
    // Nothing was sent yet on failure, so there is nothing to abort.
    let (source, meta) = match source_of(dir, name, whole, ahead).await {
        Ok(x) => x,
        Err(e) => return not_started(e),
    };
    let (source, offset, hasher) = match (held.filter(|k| k.size == meta.size), source) {
        (Some(k), Source::File(file)) => match compare(file, meta, k).await {
            Ok(Start::Same(blake3)) => return Ok(SendOutcome::Same { size: meta.size, blake3 }),
            Ok(Start::At(file, offset, hasher)) => (Source::File(file), offset, *hasher),
            Err(e) => return not_started(e),
        },
        (_, source) => (source, 0, blake3::Hasher::new()),
    };
    let header = FileHeader { offset, ..FileHeader::new(rel.clone(), meta.size, meta.mode, meta.mtime) };
    w.send(&Frame::File(header)).await?;
    meter.start(rel.as_str(), Some(meta.size));
    meter.resumed(offset);
    match send_payload(w, source, meta, offset, hasher, meter).await? {
        Ok(blake3) => {
            w.send(&Frame::End { blake3 }).await?;
            Ok(SendOutcome::Sent(Sent { size: meta.size, blake3, offset }))
        }
        Err((sent, reason)) => abort(w, meta.size, sent, &reason).await,
    }
}

/// Where a file's bytes come from.
enum Source {
    /// The open file, read as it is sent.
    File(File),
    /// A small file's whole content, read when it was opened.
    Read(Ahead),
}

/// Opens the file (or takes what the walk read of it) on a blocking thread.
async fn source_of(
    dir: &DirFd,
    name: &OsStr,
    whole: bool,
    ahead: Option<Box<Ahead>>,
) -> std::io::Result<(Source, Meta)> {
    if let Some(a) = ahead.filter(|_| whole) {
        let meta = a.meta;
        return Ok((Source::Read(*a), meta));
    }
    let (dir, name) = (dir.clone(), name.to_owned());
    let (file, meta, read) = blocking(move || open(&dir, &name, whole)).await?;
    Ok((read.map_or(Source::File(file), Source::Read), meta))
}

/// Sends the payload from `offset` on and returns the BLAKE3 of the whole
/// file, or the bytes sent and why the file must be abandoned (it shrank,
/// changed, or could not be read); `Err` means the connection failed.
async fn send_payload<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    source: Source,
    meta: Meta,
    offset: u64,
    mut hasher: blake3::Hasher,
    meter: &Meter,
) -> Result<std::result::Result<[u8; 32], (u64, String)>> {
    let mut sent = 0u64;
    let mut first = true;
    let still = match source {
        Source::Read(mut a) => {
            send_chunk(w, Some(&mut hasher), &mut a.data, &mut first, meter).await?;
            sent += a.data.len() as u64;
            Ok(a.unchanged)
        }
        Source::File(file) => {
            // The next chunk is read and hashed on a blocking thread while
            // this one is encrypted and sent: two buffers in turn. The read
            // after the last chunk asks for nothing and hands back the file
            // and the hash.
            let total = meta.size - offset;
            let want = |sent: u64| READ_LEN.min(usize::try_from(total - sent).unwrap_or(READ_LEN));
            let mut reading = read_and_hash(file, hasher, Vec::new(), want(0));
            let mut spare = Vec::new();
            loop {
                let Chunk { file, hasher: h, mut buf, read } = reading.await.expect("blocking read panicked");
                if sent == total {
                    hasher = h;
                    break unchanged(file, meta).await;
                }
                match read {
                    Ok(0) => return Ok(Err((sent, "the source file shrank while it was being sent".into()))),
                    Ok(_) => {}
                    Err(e) => return Ok(Err((sent, format!("read error: {e}")))),
                }
                let after = sent + buf.len() as u64;
                reading = read_and_hash(file, h, std::mem::take(&mut spare), want(after));
                send_chunk(w, None, &mut buf, &mut first, meter).await?;
                (sent, spare) = (after, buf);
                fault::stall().await;
            }
        }
    };
    match still {
        Ok(true) => Ok(Ok(*hasher.finalize().as_bytes())),
        Ok(false) => Ok(Err((sent, "the source file changed while it was being sent".into()))),
        Err(e) => Ok(Err((sent, format!("read error: {e}")))),
    }
}

/// Sends `buf` as `Data` frames, hashing it first with `hasher` unless the
/// caller already did.
async fn send_chunk<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    hasher: Option<&mut blake3::Hasher>,
    buf: &mut [u8],
    first: &mut bool,
    meter: &Meter,
) -> Result<()> {
    if let Some(h) = hasher {
        h.update(buf);
    }
    fault::corrupt(buf, first);
    for chunk in buf.chunks(CHUNK_LEN) {
        w.send_data(chunk).await?;
        meter.bytes(chunk.len() as u64);
    }
    Ok(())
}

/// Where to start sending, once the receiver's copy is compared with ours.
enum Start {
    /// The receiver's complete copy is identical.
    Same([u8; 32]),
    /// From this offset, with the hash of the bytes before it.
    At(File, u64, Box<blake3::Hasher>),
}

/// Hashes what the receiver's offer covers of our file and decides where to
/// start. The file is read on a blocking thread; a source that changes
/// meanwhile is caught by the size and mtime check after sending.
async fn compare(file: File, meta: Meta, k: &Held) -> std::io::Result<Start> {
    let have = k.have;
    // A prefix is only ours if it came from this very version of the file.
    let prefix = (have.offset > 0 && k.mtime == meta.mtime).then_some(have.offset);
    blocking(move || {
        let mut file = file;
        if let Some(theirs) = have.complete {
            let mut hasher = blake3::Hasher::new();
            let n = std::io::copy(&mut (&file).take(meta.size), &mut hasher)?;
            if n == meta.size && *hasher.finalize().as_bytes() == theirs {
                return Ok(Start::Same(theirs));
            }
            file.rewind()?;
        }
        if let Some(offset) = prefix {
            let mut hasher = blake3::Hasher::new();
            let n = std::io::copy(&mut (&file).take(offset), &mut hasher)?;
            if n == offset && *hasher.finalize().as_bytes() == have.prefix {
                return Ok(Start::At(file, offset, Box::new(hasher)));
            }
            file.rewind()?;
        }
        Ok(Start::At(file, 0, Box::default()))
    })
    .await
}

/// Sends a stream of unknown length (standard input) as the file `rel`:
/// `File` with the unknown size, `Data` as bytes arrive, then `End`.
pub async fn send_stream<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    rel: &WirePath,
    mut input: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    meter: &Meter,
) -> Result<SendOutcome> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mtime = Timestamp { secs: now.as_secs() as i64, nanos: now.subsec_nanos() };
    w.send(&Frame::File(FileHeader::new(rel.clone(), UNKNOWN_SIZE, 0o644, mtime))).await?;
    meter.start(rel.as_str(), None);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut first = true;
    loop {
        // A slow producer must not strand the header (or the last bytes) in
        // our buffer while the server's timeouts run: flush before waiting.
        let chunk = match input.try_recv() {
            Ok(c) => Some(c),
            Err(_) => {
                w.flush().await?;
                input.recv().await
            }
        };
        let mut buf = match chunk {
            None => break,
            Some(Ok(buf)) => buf,
            Some(Err(e)) => return abort(w, size, size, &format!("cannot read standard input: {e}")).await,
        };
        hasher.update(&buf);
        fault::corrupt(&mut buf, &mut first);
        w.send_data(&buf).await?;
        meter.bytes(buf.len() as u64);
        size += buf.len() as u64;
    }
    let blake3 = *hasher.finalize().as_bytes();
    w.send(&Frame::End { blake3 }).await?;
    Ok(SendOutcome::Sent(Sent { size, blake3, offset: 0 }))
}

/// Reads standard input on a thread of its own, in chunks of at most one
/// `Data` frame. A plain thread, not a runtime task: a read blocked on a
/// terminal or an idle pipe can then never hold up the process's exit
/// (Ctrl-C, a failed connection).
pub fn stdin_chunks() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; CHUNK_LEN];
            let msg = match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = msg.is_err();
            if tx.blocking_send(msg).is_err() || failed {
                return;
            }
        }
    });
    rx
}

async fn abort<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    size: u64,
    sent: u64,
    reason: &str,
) -> Result<SendOutcome> {
    w.send(&Frame::Abort { reason: reason.to_owned() }).await?;
    Ok(SendOutcome::Aborted { size, sent, reason: reason.to_owned() })
}

/// Opens a regular file (blocking); with `whole`, a file of at most one
/// read is also read and checked for changes.
fn open(dir: &DirFd, name: &OsStr, whole: bool) -> std::io::Result<(File, Meta, Option<Ahead>)> {
    let f = dir.open_file(name)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let meta = Meta::from(&m);
    if !whole || meta.size == 0 || meta.size > READ_LEN as u64 {
        return Ok((f, meta, None));
    }
    let mut data = Vec::with_capacity(meta.size as usize);
    (&f).take(meta.size).read_to_end(&mut data)?;
    if data.len() as u64 != meta.size {
        // It shrank as we read: the ordinary path reads it again and
        // abandons it with the right reason.
        (&f).rewind()?;
        return Ok((f, meta, None));
    }
    let unchanged = same_version(&f, meta)?;
    Ok((f, meta, Some(Ahead { meta, data, unchanged, charge: None })))
}

/// A chunk of a file read on a blocking thread, with the file and the
/// hash state (of everything before the chunk, and the chunk) handed back.
struct Chunk {
    file: File,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    read: std::io::Result<usize>,
}

/// Starts reading up to `want` bytes into `buf` (replacing its contents)
/// and hashing them, on a blocking thread.
fn read_and_hash(mut file: File, mut hasher: blake3::Hasher, mut buf: Vec<u8>, want: usize) -> JoinHandle<Chunk> {
    tokio::task::spawn_blocking(move || {
        buf.resize(want, 0);
        let mut filled = 0;
        let read = loop {
            if filled == want {
                break Ok(filled);
            }
            match file.read(&mut buf[filled..]) {
                Ok(0) => break Ok(filled),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        hasher.update(&buf);
        Chunk { file, hasher, buf, read }
    })
}

/// True when the open file still has the size and mtime it had when opened.
async fn unchanged(f: File, before: Meta) -> std::io::Result<bool> {
    blocking(move || same_version(&f, before)).await
}

fn same_version(f: &File, before: Meta) -> std::io::Result<bool> {
    let m = f.metadata()?;
    let now = crate::walk::Meta::from(&m);
    Ok(now.size == before.size && now.mtime == before.mtime)
}

/// Test-only fault injection: with `XFER_FAULT_CORRUPT_PAYLOAD` set, debug
/// builds flip one payload bit *after* hashing, so a test can prove the
/// receiver notices. Release builds compile this to nothing.
mod fault {
    #[cfg(debug_assertions)]
    pub fn corrupt(buf: &mut [u8], first: &mut bool) {
        if *first && !buf.is_empty() && std::env::var_os("XFER_FAULT_CORRUPT_PAYLOAD").is_some() {
            buf[0] ^= 1;
        }
        *first = false;
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub fn corrupt(_: &mut [u8], _: &mut bool) {}

    /// With `XFER_FAULT_SLOW_PAYLOAD=MS`, debug builds pause that long after
    /// each read of a file, so a test can kill or cut a transfer midway.
    #[cfg(debug_assertions)]
    pub async fn stall() {
        if let Some(ms) = std::env::var("XFER_FAULT_SLOW_PAYLOAD").ok().and_then(|v| v.parse().ok()) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub async fn stall() {}
}

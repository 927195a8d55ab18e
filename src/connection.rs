//! Frames over any byte stream: a buffered reader and a batching writer,
//! each bounded by timeouts that name the phase that ran out.
//!
//! The two halves are separate types so a client can write requests and read
//! responses at the same time (pipelining), and generic over
//! `AsyncRead`/`AsyncWrite` so tests can drive them over `tokio::io::duplex`.
//! TLS streams buffer like a `BufWriter`: nothing leaves until `flush()`.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::protocol::frame::{self, HEADER_LEN};
use crate::protocol::{self, Frame, PREAMBLE_LEN};

/// The time budgets of a connection, one per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (client).
    pub connect: Duration,
    /// TLS handshake.
    pub handshake: Duration,
    /// From the handshake to the preamble and first request (server).
    pub header: Duration,
    /// Longest wait for any single read or write during a session.
    pub idle: Duration,
    /// Sending TLS close_notify at the end.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            shutdown: Duration::from_secs(5),
        }
    }
}

/// Writes are batched until this many bytes are pending, so many small frames
/// (pipelined small files) share TLS records and syscalls.
const FLUSH_AT: usize = 256 * 1024;

/// `Data` payloads at least this long are written from the caller's buffer
/// instead of being copied into the batch.
const UNBATCHED_DATA: usize = 64 * 1024;

/// Runs `fut`, turning an elapsed `dur` into [`Error::Timeout`] for `phase`.
pub async fn with_timeout<T>(phase: &'static str, dur: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(dur, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout { phase, after: dur }),
    }
}

/// Reads frames from `R`, keeping partial input in a buffer.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    /// Who is on the other end, for error messages.
    peer: String,
    /// Longest wait for any single read once a transfer is under way.
    idle: Duration,
    /// The peer closed its side; every later read returns end of stream.
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, peer: impl Into<String>, idle: Duration) -> Self {
        FrameReader { io, buf: BytesMut::with_capacity(2 * FLUSH_AT), peer: peer.into(), idle, eof: false }
    }

    /// Completes when the peer closes the stream or the connection fails,
    /// reading ahead meanwhile (while fewer than `limit` bytes are
    /// buffered; past that it just waits). Lets work done for the peer be
    /// stopped once nobody waits for it. Nothing read is lost: later reads
    /// see the buffered frames, then the end of the stream.
    pub async fn closed(&mut self, limit: usize) {
        while !self.eof {
            if self.buf.len() >= limit {
                return std::future::pending().await;
            }
            if !matches!(self.fill().await, Ok(n) if n > 0) {
                return;
            }
        }
    }

    /// Reads the peer's preamble and returns its protocol version.
    pub async fn read_preamble(&mut self, within: Duration) -> Result<u16> {
        with_timeout("protocol preamble", within, async {
            while self.buf.len() < PREAMBLE_LEN {
                if self.fill().await? == 0 {
                    return Err(self.lost("closed before the protocol preamble"));
                }
            }
            let bytes: [u8; PREAMBLE_LEN] = self.buf.split_to(PREAMBLE_LEN)[..].try_into().expect("length checked");
            protocol::parse_preamble(&bytes).map_err(|error| Error::Frame { peer: self.peer.clone(), error })
        })
        .await
    }

    /// Reads the next frame; `Ok(None)` on a clean end of stream between
    /// frames. Each read from the socket may wait at most the idle timeout.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        // Between frames a peer may pause for up to `idle`; once a frame has
        // begun, all of it must arrive within `idle`, so a peer trickling a
        // byte at a time cannot hold a connection (and a file) forever.
        let mut began: Option<std::time::Instant> = None;
        loop {
            if let Some(n) = frame::check(&self.buf).map_err(|error| self.bad(error))? {
                // Consume the frame before parsing, so a frame that parses
                // badly (a hostile path, say) leaves the stream in sync.
                let bytes = self.buf.split_to(n).freeze();
                return Frame::parse(bytes).map(Some).map_err(|error| self.bad(error));
            }
            if let Some(whole) = self.front_frame_len() {
                // check() bounded the length, so this reservation is too.
                self.buf.reserve(whole - self.buf.len());
            }
            let left = match began {
                Some(t) => self.idle.saturating_sub(t.elapsed()),
                None if !self.buf.is_empty() => {
                    began = Some(std::time::Instant::now());
                    self.idle
                }
                None => self.idle,
            };
            let Ok(n) = tokio::time::timeout(left, self.fill()).await else {
                return Err(Error::Timeout { phase: "idle transfer", after: self.idle });
            };
            let n = n?;
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(self.lost("closed in the middle of a frame")) };
            }
        }
    }

    /// Like [`read_frame`](Self::read_frame), with a tighter deadline for
    /// the whole frame (used for the first request of a connection).
    pub async fn read_frame_within(&mut self, phase: &'static str, within: Duration) -> Result<Option<Frame>> {
        with_timeout(phase, within, self.read_frame()).await
    }

    /// True when a whole frame is already buffered, so reading it will not
    /// wait on the peer. Callers flush their replies before waiting.
    pub fn has_frame(&self) -> bool {
        matches!(frame::check(&self.buf), Ok(Some(_)))
    }

    /// True when a whole `Probe` frame is buffered next.
    pub fn has_probe(&self) -> bool {
        self.has_frame() && frame::starts_with_probe(&self.buf)
    }

    /// The peer's name, as given at construction.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    async fn fill(&mut self) -> Result<usize> {
        if self.eof {
            return Ok(0);
        }
        if self.buf.is_empty() {
            // Room for a whole payload frame from the start of the buffer
            // (free when the buffer is empty), so it never has to move.
            self.buf.reserve(HEADER_LEN + protocol::CHUNK_LEN);
        } else if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(FLUSH_AT);
        }
        // Inside a large frame, read no further than its end: the buffer is
        // then empty once the frame is taken, and the next reservation
        // costs nothing, where bytes of the next frame would have to be
        // moved to the front of the buffer (a copy of most of the payload).
        let r = match self.left_in_large_frame() {
            Some(left) => (&mut self.io).take(left as u64).read_buf(&mut self.buf).await,
            None => self.io.read_buf(&mut self.buf).await,
        };
        let n = r.map_err(|source| Error::ConnectionLost { peer: self.peer.clone(), source })?;
        self.eof = n == 0;
        Ok(n)
    }

    /// Bytes still missing of the frame at the front of the buffer, when
    /// that frame is large (a `Data` payload, in practice).
    fn left_in_large_frame(&self) -> Option<usize> {
        let whole = self.front_frame_len().filter(|&whole| whole >= UNBATCHED_DATA)?;
        Some(whole.saturating_sub(self.buf.len())).filter(|&left| left > 0)
    }

    /// Length, header included, of the frame whose header is at the front
    /// of the buffer (as its header says: `frame::check` validates it).
    fn front_frame_len(&self) -> Option<usize> {
        let len: [u8; 4] = self.buf.get(1..HEADER_LEN)?.try_into().expect("4 bytes");
        Some(HEADER_LEN + u32::from_be_bytes(len) as usize)
    }

    fn bad(&self, error: protocol::FrameError) -> Error {
        Error::Frame { peer: self.peer.clone(), error }
    }

    fn lost(&self, what: &str) -> Error {
        Error::ConnectionLost {
            peer: self.peer.clone(),
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned()),
        }
    }
}

/// Writes frames to `W`, batching small ones.
pub struct FrameWriter<W> {
    io: W,
    buf: Vec<u8>,
    peer: String,
    idle: Duration,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, peer: impl Into<String>, idle: Duration) -> Self {
        FrameWriter { io, buf: Vec::with_capacity(2 * FLUSH_AT), peer: peer.into(), idle }
    }

    /// Queues this build's preamble.
    pub fn queue_preamble(&mut self) {
        self.buf.extend_from_slice(&protocol::preamble());
    }

    /// Queues a frame, writing out the batch once it is large.
    pub async fn send(&mut self, f: &Frame) -> Result<()> {
        f.encode(&mut self.buf);
        self.write_if_full().await
    }

    /// Queues a `Data` frame holding `payload` (at most `MAX_DATA_LEN`). A
    /// large payload goes to the stream straight from `payload`, after what
    /// is queued: copying it into the batch first would cost a pass over
    /// every byte sent.
    pub async fn send_data(&mut self, payload: &[u8]) -> Result<()> {
        frame::encode_data_header(payload.len(), &mut self.buf);
        if payload.len() < UNBATCHED_DATA {
            self.buf.extend_from_slice(payload);
            return self.write_if_full().await;
        }
        self.write_buffered().await?;
        self.write_all(payload).await
    }

    /// Writes everything queued and flushes the stream (TLS records out).
    pub async fn flush(&mut self) -> Result<()> {
        self.write_buffered().await?;
        let idle = self.idle;
        let peer = self.peer.clone();
        with_timeout("idle transfer", idle, async {
            self.io.flush().await.map_err(|source| Error::ConnectionLost { peer, source })
        })
        .await
    }

    /// Flushes, then closes the write side (TLS close_notify).
    pub async fn shutdown(&mut self, within: Duration) -> Result<()> {
        self.flush().await?;
        let peer = self.peer.clone();
        with_timeout("TLS shutdown", within, async {
            self.io.shutdown().await.map_err(|source| Error::ConnectionLost { peer, source })
        })
        .await
    }

    async fn write_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.write_buffered().await?;
        }
        Ok(())
    }

    /// Writes out the batch.
    async fn write_buffered(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_all(&buf).await;
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// Each write call gets the idle budget, so a slow but moving peer is
    /// fine and a stalled one is dropped.
    async fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            let n = with_timeout("idle transfer", self.idle, async {
                self.io
                    .write(&bytes[at..])
                    .await
                    .map_err(|source| Error::ConnectionLost { peer: self.peer.clone(), source })
            })
            .await?;
            if n == 0 {
                return Err(Error::ConnectionLost {
                    peer: self.peer.clone(),
                    source: std::io::ErrorKind::WriteZero.into(),
                });
            }
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WirePath;

    #[tokio::test]
    async fn frames_cross_a_duplex_in_order_with_a_preamble() {
        let (a, b) = tokio::io::duplex(1200);
        let t = Duration::from_secs(5);
        let mut w = FrameWriter::new(a, "b", t);
        let mut r = FrameReader::new(b, "a", t);
        let big = vec![0xAB; protocol::MAX_DATA_LEN];
        let writer = async move {
            w.queue_preamble();
            w.send(&Frame::Get { path: WirePath::parse("x/y").unwrap() }).await?;
            w.send_data(&big).await?;
            w.send(&Frame::Ok).await?;
            w.shutdown(t).await
        };
        let reader = async move {
            assert_eq!(r.read_preamble(t).await?, protocol::VERSION);
            assert!(matches!(r.read_frame().await?, Some(Frame::Get { .. })));
            match r.read_frame().await? {
                Some(Frame::Data(d)) => assert_eq!(d.len(), protocol::MAX_DATA_LEN),
                other => panic!("{other:?}"),
            }
            assert_eq!(r.read_frame().await?, Some(Frame::Ok));
            assert_eq!(r.read_frame().await?, None);
            Ok::<_, Error>(())
        };
        let (wr, rr) = tokio::join!(writer, reader);
        wr.unwrap();
        rr.unwrap();
    }

    #[tokio::test]
    async fn a_stream_cut_mid_frame_is_an_error_not_an_end() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut buf = Vec::new();
        Frame::Ok.encode(&mut buf);
        Frame::Get { path: WirePath::parse("abc").unwrap() }.encode(&mut buf);
        a.write_all(&buf[..buf.len() - 1]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b, "a", Duration::from_secs(5));
        assert_eq!(r.read_frame().await.unwrap(), Some(Frame::Ok));
        assert!(matches!(r.read_frame().await, Err(Error::ConnectionLost { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_hits_the_idle_timeout() {
        let (_a, b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(b, "a", Duration::from_secs(60));
        assert!(matches!(r.read_frame().await, Err(Error::Timeout { phase: "idle transfer", .. })));
    }
}

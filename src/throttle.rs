//! `--bwlimit`: a byte stream that moves at most a given rate in each
//! direction.
//!
//! It wraps the TCP stream under TLS, so everything the connection carries
//! (payload, frames, TLS records) counts, and a pull is slowed as well as a
//! push: a receiver that reads slowly slows its sender through TCP's own
//! flow control. Each direction keeps a budget that grows at the rate, up
//! to a small burst; a read or write that finds it empty waits until enough
//! has accrued, so the average over a transfer is the rate asked for.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes a direction may move at once after a pause: a tenth of a second
/// at the rate, at least 16 KiB (one TLS record), so small rates still make
/// progress and large ones are not chopped into tiny writes.
fn burst(rate: u64) -> u64 {
    (rate / 10).max(16 * 1024)
}

/// The budget of one direction.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    tokens: f64,
    updated: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket { rate, tokens: burst(rate) as f64, updated: Instant::now(), wait: None }
    }

    /// How many bytes may move now, or Pending until enough may: `want`,
    /// or a quarter of the burst if that is less. Handing out whatever
    /// trickled in since the last call would mean a stream of tiny writes
    /// (one TCP segment each) and a busy core at modest rates.
    fn poll_allowance(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        loop {
            if let Some(wait) = self.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            let now = Instant::now();
            let cap = burst(self.rate) as f64;
            self.tokens = (self.tokens + now.duration_since(self.updated).as_secs_f64() * self.rate as f64).min(cap);
            self.updated = now;
            let enough = (want.max(1) as f64).min(cap / 4.0).max(1.0);
            if self.tokens >= enough {
                return Poll::Ready(self.tokens as usize);
            }
            let after = Duration::from_secs_f64((enough - self.tokens) / self.rate as f64);
            self.wait = Some(Box::pin(tokio::time::sleep(after)));
        }
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// A stream limited to `rate` bytes a second each way, or passed through
/// untouched without a rate.
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    read: Option<Bucket>,
    write: Option<Bucket>,
    scratch: Vec<u8>,
}

impl<S> Throttled<S> {
    /// `inner`, limited to `rate` bytes a second in each direction (none:
    /// unlimited).
    pub fn new(inner: S, rate: Option<u64>) -> Throttled<S> {
        let rate = rate.filter(|r| *r > 0);
        Throttled { inner, read: rate.map(Bucket::new), write: rate.map(Bucket::new), scratch: Vec::new() }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(bucket) = this.read.as_mut() else { return Pin::new(&mut this.inner).poll_read(cx, buf) };
        let allowed = ready!(bucket.poll_allowance(cx, buf.remaining())).min(buf.remaining());
        // Read at most `allowed` through a scratch buffer (only throttled
        // streams pay for the copy).
        this.scratch.resize(allowed, 0);
        let mut limited = ReadBuf::new(&mut this.scratch);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        bucket.spend(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(bucket) = this.write.as_mut() else { return Pin::new(&mut this.inner).poll_write(cx, data) };
        let allowed = ready!(bucket.poll_allowance(cx, data.len())).min(data.len());
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..allowed]))?;
        bucket.spend(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn writes_and_reads_average_the_rate() {
        let rate = 1 << 20;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut w = Throttled::new(a, Some(rate));
        let mut r = Throttled::new(b, Some(rate));
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            w.write_all(&vec![7u8; 4 << 20]).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), 4 << 20);
        // 4 MiB at 1 MiB/s, less the first burst: between 3.8 and 4.2 s of
        // (paused, so exact) tokio time.
        let took = start.elapsed().as_secs_f64();
        assert!((3.8..4.2).contains(&took), "{took}");
    }

    /// Counts the writes that reach the inner stream.
    struct Counting(usize);

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.0 += 1;
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_rate_moves_in_chunks_not_a_trickle() {
        // 700 KiB/s: 16 KiB bursts, so a quarter of one (4 KiB) a write at
        // least: 1 MiB in no more than 256 writes plus the first.
        let mut w = Throttled::new(Counting(0), Some(700 * 1024));
        for _ in 0..64 {
            w.write_all(&[0u8; 16 * 1024]).await.unwrap();
        }
        assert!(w.get_ref().0 <= 260, "{} writes for 1 MiB", w.get_ref().0);
    }

    #[tokio::test]
    async fn without_a_rate_nothing_changes() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = Throttled::new(a, None);
        w.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}

//! One connection: TLS handshake under a deadline, the peer's name from its
//! verified certificate, the admission check, the version exchange, then
//! requests in order until the client closes.
//!
//! A failure that concerns one request (a refused path, a hash mismatch) is
//! answered with an `Error` frame and the connection goes on; a frame that
//! breaks the protocol is answered and the connection closed. Nothing a
//! client sends can reach another connection: each runs on its own task and
//! shares only the read-only [`Shared`] state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::gate::{Slot, Ticket};
use super::{Live, Shared};
use crate::auth::Perm;
use crate::budget::{Budget, Charge};
use crate::connection::{FrameReader, FrameWriter, with_timeout};
use crate::error::{Error, Result};
use crate::hashes::{HASH_ALLOWANCE, Work};
use crate::meter::Meter;
use crate::partial::{Partial, PartialId, RESUMABLE_MIN};
use crate::progress::human_bytes;
use crate::protocol::{
    ALPN, ErrorCode, FileHeader, Frame, FrameError, Have, MAX_OFFER_BYTES, MAX_OFFERS, Offer, Timestamp, UNKNOWN_SIZE,
    VERSION, WirePath,
};
use crate::store::{self, GroupSize, Resume, StoreError, Verified};
use crate::tls;
use crate::transfer::{self, FileOutcome, SendOutcome, Target, blocking};
use crate::walk::Item;

type Tls = TlsStream<TcpStream>;

/// Serves one accepted TCP connection to its end; logs, never fails.
/// `ticket` is its place among the handshakes in progress.
pub(super) async fn serve(
    tcp: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    token: CancellationToken,
    ticket: Ticket,
) {
    let _ = tcp.set_nodelay(true);
    let t = shared.timeouts;
    // This connection keeps the configuration current at its start, even
    // if a reload swaps it meanwhile.
    let live = shared.live();
    let accepted = tokio::select! {
        r = with_timeout("TLS handshake", t.handshake, async {
            live.acceptor.accept(tcp).await.map_err(|source| Error::ConnectionLost { peer: addr.to_string(), source })
        }) => r,
        // A newer connection needed the place: the oldest unfinished
        // handshakes are the likeliest to be idle sockets of a flood.
        _ = ticket.evicted.cancelled() => {
            tracing::debug!(%addr, "handshake dropped to make room for newer ones");
            return;
        }
    };
    drop(ticket);
    let tls = match accepted {
        Ok(s) => s,
        Err(e) => {
            preauth_warning(addr, &describe(&e));
            return;
        }
    };
    // rustls lets a client that offers no ALPN at all through; xfer wants
    // proof that the peer means to speak this protocol.
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        preauth_warning(addr, "the client did not negotiate the xfer/1 protocol (ALPN)");
        return;
    }
    // rustls has verified the chain against the CA; only then are the
    // certificate's names trusted to identify the peer.
    let chain: Vec<_> =
        tls.get_ref().1.peer_certificates().unwrap_or_default().iter().map(|c| c.clone().into_owned()).collect();
    let names = chain.first().map(tls::cert_names).unwrap_or_default();
    let peer = names.first().map(|n| crate::text::escape(n).into_owned()).unwrap_or_else(|| "(unnamed)".to_owned());
    let span = info_span!("conn", peer = %peer, %addr);
    async move {
        info!("connected");
        let started = Instant::now();
        let (rd, wr) = tokio::io::split(tls);
        let work = Arc::new(Work::new(HASH_ALLOWANCE));
        let mut conn = Conn {
            r: FrameReader::new(rd, peer.clone(), t.idle),
            w: FrameWriter::new(wr, peer.clone(), t.idle),
            shared,
            live,
            chain,
            names,
            token,
            slot: None,
            work: work.clone(),
            _work_guard: CancelOnDrop(work),
            files: 0,
            bytes: 0,
            stopped_mid_response: false,
            batch: Vec::new(),
            batch_size: GroupSize::default(),
            folder_fs: Vec::new(),
            claims: HashMap::new(),
            offers: HashMap::new(),
            offered: (0, 0),
        };
        let result = conn.run().await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => info!(files = conn.files, bytes = conn.bytes, secs = format_args!("{secs:.3}"), "closed"),
            Err(e) => warn!(files = conn.files, bytes = conn.bytes, "closed with error: {}", describe(&e)),
        }
    }
    .instrument(span)
    .await
}

/// Logs why a connection was refused before its peer was known. Anyone
/// can cause these, so they are rate-limited: at most a few lines a second,
/// then one line counting those not logged.
fn preauth_warning(addr: SocketAddr, why: &str) {
    use std::sync::Mutex;
    use std::time::Duration;
    const PER_SECOND: u32 = 10;
    static WINDOW: Mutex<Option<(Instant, u32, u64)>> = Mutex::new(None);
    let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let (start, logged, dropped) = w.get_or_insert((Instant::now(), 0, 0));
    if start.elapsed() >= Duration::from_secs(1) {
        if *dropped > 0 {
            warn!("{dropped} more connections refused before TLS completed were not logged (rate limit)");
        }
        (*start, *logged, *dropped) = (Instant::now(), 0, 0);
    }
    if *logged < PER_SECOND {
        *logged += 1;
        warn!(%addr, "refused before TLS completed: {why}");
    } else {
        *dropped += 1;
    }
}

/// An error as one log line, with TLS failures explained.
fn describe(e: &Error) -> String {
    match e {
        Error::ConnectionLost { source, .. } => match tls::rustls_error(source) {
            Some(te) => tls::explain_for_server(te),
            None => source.to_string(),
        },
        other => other.to_string(),
    }
}

struct Conn {
    r: FrameReader<ReadHalf<Tls>>,
    w: FrameWriter<WriteHalf<Tls>>,
    shared: Arc<Shared>,
    /// TLS and policy as this session last checked them (see `refresh`).
    live: Arc<Live>,
    /// The client's verified certificate chain, re-checked after reloads.
    chain: Vec<CertificateDer<'static>>,
    /// The peer's names from its verified certificate (CN, DNS SANs).
    names: Vec<String>,
    /// Cancelled when the server shuts down; checked between files.
    token: CancellationToken,
    /// This session's place among those served (`--max-conns`, and its
    /// identity's share); taken after admission, held to the end.
    slot: Option<Slot>,
    /// The file hashing this connection may still cause; cancelled (by
    /// the guard) when the connection ends, even mid-hash.
    work: Arc<Work>,
    _work_guard: CancelOnDrop,
    /// Files received or sent, and their payload bytes, for the close log.
    files: u64,
    bytes: u64,
    /// A response was cut short with `SHUTTING_DOWN`; nothing more to say.
    stopped_mid_response: bool,
    /// Received, verified files awaiting the next group commit and the
    /// replies queued behind them (in request order), and what they hold.
    batch: Vec<Reply>,
    batch_size: GroupSize,
    /// A handle on each filesystem where the batch created folders.
    folder_fs: Vec<(Option<u64>, crate::beneath::DirFd)>,
    /// Partial copies offered to this client (`Have`), held until its
    /// `File` for the same path continues or replaces them.
    claims: HashMap<WirePath, Partial>,
    /// What the client holds, for the files of its next `Get`s, each with
    /// its share of the server's memory budget.
    offers: HashMap<WirePath, (transfer::Held, Charge)>,
    /// `OFFER` frames and bytes received, bounded by the protocol.
    offered: (usize, usize),
}

/// Memory an offer holds besides its path (map entry, sizes, hash).
const OFFER_OVERHEAD: usize = 160;

/// Bytes read ahead, while probes are answered, to notice a client that
/// has left.
const WATCH_AHEAD: usize = 64 * 1024;

/// Probes answered together at most (one blocking call for all).
const MAX_PROBES: usize = 1024;

/// A `Probe`'s path, size and mtime.
type Probe = (WirePath, u64, Timestamp);

/// What goes out at the next group commit, in request order.
enum Reply {
    /// `STORED` (or `ERROR`) once the file is installed.
    File(Pending),
    /// A reply that needs nothing installed but must not overtake the
    /// files before it (a `HAVE`).
    Ready(Frame),
    /// `OK` for a folder just created, once the group commit made it
    /// durable.
    Folder(WirePath),
}

/// What a queued reply becomes once its group is committed.
enum Answer {
    File(u64, [u8; 32], Instant),
    Now(Frame),
    Folder(WirePath),
}

/// A received, verified file awaiting its group commit.
struct Pending {
    staged: Verified,
    size: u64,
    blake3: [u8; 32],
    started: Instant,
    /// The memory budget a file held in memory uses until its commit.
    charge: Option<Charge>,
}

/// Payloads longer than this are not received while replies wait.
const LONG_PAYLOAD: u64 = 1 << 20;

const SHUTTING_DOWN: &str = "the server is shutting down; run the command again";

impl Conn {
    /// Runs the session, then closes it as cleanly as the failure allows:
    /// queued replies and a final `Error` go out, then close_notify, all
    /// within the shutdown budget.
    async fn run(&mut self) -> Result<()> {
        let result = self.session().await;
        // Files that arrived whole and verified before the session ended
        // (however it ended) are installed and, when possible, answered.
        let within = self.shared.timeouts.shutdown;
        let _ = tokio::time::timeout(within, self.commit_batch()).await;
        let last_word = match &result {
            Ok(()) => None,
            // Not an xfer client at all: no preamble was exchanged, just close.
            Err(Error::Frame { error: FrameError::BadMagic, .. }) => None,
            Err(e @ (Error::Protocol { .. } | Error::Frame { .. })) => Some((ErrorCode::Protocol, e.to_string())),
            Err(Error::Version { .. }) => Some((ErrorCode::Version, result.as_ref().unwrap_err().to_string())),
            Err(Error::NotAdmitted(m)) => Some((ErrorCode::NotAdmitted, m.clone())),
            Err(Error::Busy(m)) => Some((ErrorCode::Busy, m.clone())),
            Err(_) => None,
        };
        let within = self.shared.timeouts.shutdown;
        let w = &mut self.w;
        let closed = tokio::time::timeout(within, async move {
            if let Some((code, message)) = last_word {
                w.send(&Frame::Error { code, message }).await?;
            }
            w.shutdown(within).await
        })
        .await;
        match (result, closed) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(r)) => r,
            (Ok(()), Err(_)) => Err(Error::Timeout { phase: "TLS shutdown", after: within }),
        }
    }

    async fn session(&mut self) -> Result<()> {
        let names = &self.names;
        let t = self.shared.timeouts;
        let version = self.r.read_preamble(t.header).await?;
        self.w.queue_preamble();
        if version != VERSION {
            return Err(Error::Version { peer: self.r.peer().to_owned(), ours: VERSION, theirs: version });
        }
        if !admitted(&self.shared.allow, names) {
            // The allow list is the server's business: the peer learns
            // only that it is not on it.
            warn!("refused: not on the --allow list");
            return Err(Error::NotAdmitted(format!(
                "certificate '{}' is not allowed on this server",
                crate::text::escape(names.first().map(String::as_str).unwrap_or("(unnamed)"))
            )));
        }
        self.take_slot().await?;
        let mut first = true;
        loop {
            // Received files are committed in groups and replies batched;
            // both go out before we wait on the client.
            if !self.r.has_frame() {
                self.commit_batch().await?;
                self.w.flush().await?;
            }
            let token = self.token.clone();
            let next = tokio::select! {
                // Shutdown is only noticed between requests (and between the
                // files of a pull), never inside a file.
                biased;
                _ = token.cancelled() => {
                    self.commit_batch().await?;
                    self.w.send(&Frame::Error { code: ErrorCode::ShuttingDown, message: SHUTTING_DOWN.into() }).await?;
                    return Ok(());
                }
                f = self.read_request(first) => f,
            };
            first = false;
            match next {
                Ok(Some(frame)) => {
                    // Replies go out in request order: files still waiting
                    // for their group commit are answered first. Probes
                    // queue their answers behind those files instead of
                    // forcing a commit (a push interleaves them with files).
                    let waits = match &frame {
                        Frame::File(_) | Frame::Probe { .. } | Frame::Offer(_) => false,
                        // A folder needs the files before it installed only
                        // if one of them is where the folder goes.
                        Frame::Dir { path, .. } => self.batch_holds_file_on(path),
                        _ => true,
                    };
                    if waits {
                        self.commit_batch().await?;
                    }
                    self.dispatch(frame).await?;
                    if self.token.is_cancelled() && self.stopped_mid_response {
                        return Ok(());
                    }
                }
                Ok(None) => return self.commit_batch().await,
                // An OFFER gets no reply, not even a refusal: answering
                // would put the client's replies out of step.
                Err(Error::Frame { error, .. }) if error.is_offer() => warn!("ignored an offer: {error}"),
                Err(Error::Frame { error: error @ FrameError::BadPath { .. }, .. }) => {
                    self.commit_batch().await?;
                    self.refuse_bad_path(error).await?
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes a session slot, waiting (up to three header timeouts: 30 s by
    /// default) when the server or this identity is at its limit; the
    /// preamble goes out first so the client knows it is being served, not
    /// stalled (it then waits for replies under its idle timeout).
    async fn take_slot(&mut self) -> Result<()> {
        let peer = self.names.first().cloned().unwrap_or_default();
        let slots = self.shared.slots.clone();
        let slot = match slots.try_acquire(&peer) {
            Ok(slot) => slot,
            Err(_) => {
                self.w.flush().await?;
                match slots.acquire(&peer, self.shared.timeouts.header * 3).await {
                    Ok(slot) => slot,
                    Err(busy) => {
                        let message = busy.message(&crate::text::escape(&peer));
                        warn!("refused: {message}");
                        return Err(Error::Busy(message));
                    }
                }
            }
        };
        self.slot = Some(slot);
        Ok(())
    }

    async fn read_request(&mut self, first: bool) -> Result<Option<Frame>> {
        if first {
            self.r.read_frame_within("request header", self.shared.timeouts.header).await
        } else {
            self.r.read_frame().await
        }
    }

    /// Switches to the configuration loaded last, if a reload happened since
    /// the previous request, after checking that this client's certificate
    /// still passes it (not revoked, still signed by a trusted CA).
    fn refresh(&mut self) -> Result<()> {
        let now = self.shared.live();
        if Arc::ptr_eq(&now, &self.live) {
            return Ok(());
        }
        let Some((leaf, rest)) = self.chain.split_first() else {
            return Err(Error::NotAdmitted("no client certificate".into()));
        };
        if let Err(e) = now.verifier.verify_client_cert(leaf, rest, UnixTime::now()) {
            let why = tls::explain_for_server(&e);
            warn!("session ended: the reloaded configuration refuses this client: {why}");
            return Err(Error::NotAdmitted(format!(
                "this client's certificate is no longer accepted by the server ({why})"
            )));
        }
        self.live = now;
        Ok(())
    }

    async fn dispatch(&mut self, frame: Frame) -> Result<()> {
        // Every request runs under the configuration in force now.
        self.refresh()?;
        match frame {
            Frame::File(h) => self.put(h).await,
            Frame::Probe { path, size, mtime } => self.probe(path, size, mtime).await,
            Frame::Offer(o) => self.offer(o),
            Frame::Dir { path, .. } => {
                let root = self.shared.root.clone();
                let p = path.clone();
                let r = match self.authorize(Perm::Write, &path) {
                    Ok(()) => blocking(move || root.mkdir(&p).map(|d| (d.device().ok(), d))).await,
                    Err(e) => Err(e),
                };
                match r {
                    // `OK` once the folder is durable: it waits for the
                    // next group commit, whose syncs cover it (one handle
                    // kept per filesystem, not per folder).
                    Ok((dev, dir)) => {
                        if !self.folder_fs.iter().any(|(d, _)| *d == dev) {
                            self.folder_fs.push((dev, dir));
                        }
                        self.batch.push(Reply::Folder(path));
                        self.batch_size.add_folder();
                        if self.batch_size.full() {
                            self.commit_batch().await?;
                        }
                        Ok(())
                    }
                    Err(e) => self.answer(&path, "mkdir", Err(e)).await,
                }
            }
            Frame::Get { path } => self.get(path).await,
            Frame::List { path } => self.list(path).await,
            Frame::Remove { path, recursive } => {
                let root = self.shared.root.clone();
                let p = path.clone();
                let r = match self.authorize(Perm::Delete, &path) {
                    Ok(()) => blocking(move || root.remove(&p, recursive)).await,
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    info!(path = %path, "removed");
                }
                self.answer(&path, "remove", r).await
            }
            other => Err(Error::protocol(self.r.peer(), format!("unexpected {} frame between requests", other.name()))),
        }
    }

    /// Keeps what a pulling client holds, within the protocol's bounds (a
    /// client past them is cut off: it broke the protocol) and the server's
    /// memory budget (past it, offers are ignored and those files are sent
    /// whole, which the protocol allows).
    fn offer(&mut self, o: Offer) -> Result<()> {
        self.offered.0 += 1;
        self.offered.1 += o.body_len();
        if self.offered.0 > MAX_OFFERS || self.offered.1 > MAX_OFFER_BYTES {
            return Err(Error::protocol(
                self.r.peer(),
                format!("more than {MAX_OFFERS} OFFERs or {MAX_OFFER_BYTES} bytes of them on one connection"),
            ));
        }
        let Some(charge) = self.shared.budget.try_charge(o.path.as_str().len() + OFFER_OVERHEAD) else {
            return Ok(());
        };
        let have = Have { offset: o.offset, prefix: o.prefix, complete: None };
        self.offers.insert(o.path, (transfer::Held { size: o.size, mtime: o.mtime, have }, charge));
        Ok(())
    }

    /// True when a file awaiting its group commit would be installed at
    /// `path` or at a folder above it.
    fn batch_holds_file_on(&self, path: &WirePath) -> bool {
        self.batch.iter().any(|r| match r {
            Reply::File(p) => path.starts_with(p.staged.path()),
            Reply::Ready(_) | Reply::Folder(..) => false,
        })
    }

    /// `--read-only` and the policy file, for `perm` on `path`.
    fn authorize(&self, perm: Perm, path: &WirePath) -> std::result::Result<(), StoreError> {
        let denied = |message: String| StoreError { code: ErrorCode::Denied, message };
        if self.shared.read_only && perm != Perm::Read {
            return Err(denied(format!("{path}: this server is read-only (--read-only)")));
        }
        match &self.live.policy {
            Some(policy) => policy.check(&self.names, perm, path).map_err(denied),
            None => Ok(()),
        }
    }

    /// Replies `Ok` or `Error` to a request without payload, in order
    /// behind any files awaiting their group commit.
    async fn answer(&mut self, path: &WirePath, op: &str, r: std::result::Result<(), StoreError>) -> Result<()> {
        let reply = match r {
            Ok(()) => Frame::Ok,
            Err(e) => {
                warn!(path = %path, "{op} refused: {}", e.message);
                Frame::Error { code: e.code, message: e.message }
            }
        };
        self.reply_in_order(reply).await
    }

    /// Answers a `Probe`, and the probes buffered right behind it, with one
    /// blocking call for all: for each, the partial copy this client left
    /// of this version of the file (claimed until its `File`), and the hash
    /// of a complete copy of the same size, shown only to clients allowed
    /// to read it.
    async fn probe(&mut self, path: WirePath, size: u64, mtime: Timestamp) -> Result<()> {
        let (probes, bad) = self.probes_after((path, size, mtime)).await?;
        let peer = self.names.first().cloned().unwrap_or_default();
        let mut asks = Vec::with_capacity(probes.len());
        for (path, size, mtime) in probes {
            self.claims.remove(&path);
            // A probe is answered as the push it announces would be: a
            // refusal for a path no push may write.
            let allowed = self.authorize(Perm::Write, &path).and_then(|()| self.shared.root.check_reserved(&path));
            let readable = self.authorize(Perm::Read, &path).is_ok();
            let id = PartialId::new(&peer, &path, size, mtime);
            asks.push((path, size, id, allowed, readable));
        }
        let (root, work) = (self.shared.root.clone(), self.work.clone());
        let task = blocking(move || {
            asks.into_iter()
                .map(|(path, size, id, allowed, readable)| {
                    let found = allowed.map(|()| {
                        let complete = if readable { root.hash_if_size(&path, size, &work) } else { None };
                        let partial = if size >= RESUMABLE_MIN { root.claim_partial(&id).ok().flatten() } else { None };
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
    async fn probes_after(&mut self, first: Probe) -> Result<(Vec<Probe>, Option<FrameError>)> {
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

    /// Sends `frame` now, or queues it behind files awaiting their commit.
    async fn reply_in_order(&mut self, frame: Frame) -> Result<()> {
        if self.batch.is_empty() {
            self.w.send(&frame).await
        } else {
            self.batch.push(Reply::Ready(frame));
            Ok(())
        }
    }

    /// How to stage a pushed file: continuing the partial copy offered for
    /// it, as a new partial copy, or (small files, streams) not resumable.
    fn resume_for(&mut self, h: &FileHeader) -> Result<(Resume, blake3::Hasher)> {
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

    /// Receives one pushed file.
    async fn put(&mut self, h: FileHeader) -> Result<()> {
        let started = Instant::now();
        let size = h.known_size();
        let max = self.shared.max_size.unwrap_or(u64::MAX);
        let (resume, prefix) = self.resume_for(&h)?;
        let staged = match (self.authorize(Perm::Write, &h.path), size) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(size)) if size > max => Err(StoreError {
                code: ErrorCode::TooLarge,
                message: format!(
                    "{}: {} is larger than this server's --max-size of {}",
                    h.path,
                    human_bytes(size),
                    human_bytes(max)
                ),
            }),
            (Ok(()), _) => {
                let (root, p) = (self.shared.root.clone(), h.path.clone());
                let near = self.batch.iter().rev().find_map(|r| match r {
                    Reply::File(pending) => pending.staged.near(),
                    Reply::Ready(_) | Reply::Folder(..) => None,
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
                let (staged, charge) = match hold(self.shared.budget.clone(), staged).await {
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
    async fn commit_batch(&mut self) -> Result<()> {
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
            }
        }
        self.batch_size = GroupSize::default();
        let (results, folders_ok) = blocking(move || store::commit_group(staged, &folders)).await;
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

    /// Sends a file or a tree, then `Ok`.
    async fn get(&mut self, path: WirePath) -> Result<()> {
        if let Err(e) = self.authorize(Perm::Read, &path) {
            return self.answer(&path, "pull", Err(e)).await;
        }
        let root = self.shared.root.clone();
        let p = path.clone();
        let walk = match blocking(move || root.walk(&p)).await {
            Ok(w) => w,
            Err(e) => return self.answer(&path, "pull", Err(e)).await,
        };
        let mut items = transfer::spawn_walk(walk, self.shared.budget.clone());
        let mut first = true;
        while let Some(item) = transfer::next_item(&mut items, &mut self.w).await? {
            // The first item of a GET for one file is that file.
            let single_file = std::mem::take(&mut first) && matches!(item, Item::File { .. });
            if self.token.is_cancelled() {
                // The file in flight has finished; the rest of the tree waits.
                self.stopped_mid_response = true;
                let message = SHUTTING_DOWN.to_owned();
                return self.w.send(&Frame::Error { code: ErrorCode::ShuttingDown, message }).await;
            }
            match item {
                Item::Dir { rel, meta } => {
                    self.w.send(&Frame::Dir { path: rel, mode: meta.mode, mtime: meta.mtime }).await?;
                }
                Item::File { rel, dir, name, ahead, .. } => {
                    let started = Instant::now();
                    // A copy the client holds, whole or in part: send the
                    // rest (nothing, if it is whole and identical).
                    let held = self.offers.get(&rel).map(|(held, _)| held.clone());
                    let w = &mut self.w;
                    match transfer::send_file(w, &rel, &dir, &name, &Meter::off(), held.as_ref(), ahead).await? {
                        SendOutcome::Sent(s) => self.log_file("sent", &rel, s.size - s.offset, &s.blake3, started),
                        // Offers carry no complete hash, so this cannot happen.
                        SendOutcome::Same { .. } => {}
                        SendOutcome::Aborted { reason, .. } => warn!(path = %rel, "pull of file abandoned: {reason}"),
                        // A GET of just this file: refuse it outright, with
                        // the cause's code (permission denied is exit 4).
                        SendOutcome::NotStarted { code, reason } if single_file => {
                            warn!(path = %rel, "pull refused: {reason}");
                            return self.w.send(&Frame::Error { code, message: reason }).await;
                        }
                        SendOutcome::NotStarted { reason, .. } => self.send_failed(&rel, &reason).await?,
                    }
                }
                // A name that cannot be sent is reported under a valid
                // stand-in, so the client still learns of it.
                Item::Skipped { rel, reason } => {
                    self.w.send(&Frame::Skipped { path: WirePath::lossy(&rel), reason }).await?;
                }
                Item::Failed { rel, error } => self.send_failed(&WirePath::lossy(&rel), &error).await?,
            }
        }
        self.w.send(&Frame::Ok).await
    }

    /// Tells a pulling client that one file of a tree could not be read: an
    /// empty header and an `Abort`, so it is reported as failed, not skipped.
    async fn send_failed(&mut self, path: &WirePath, reason: &str) -> Result<()> {
        warn!(path = %path, "cannot send: {reason}");
        let h = FileHeader::new(path.clone(), 0, 0o600, Timestamp::default());
        self.w.send(&Frame::File(h)).await?;
        self.w.send(&Frame::Abort { reason: format!("the server cannot read it: {reason}") }).await
    }

    async fn list(&mut self, path: WirePath) -> Result<()> {
        if let Err(e) = self.authorize(Perm::Read, &path) {
            return self.answer(&path, "list", Err(e)).await;
        }
        let root = self.shared.root.clone();
        let p = path.clone();
        match blocking(move || root.list(&p)).await {
            Ok(entries) => {
                for e in entries {
                    self.w.send(&Frame::Entry(e)).await?;
                }
                self.w.send(&Frame::Ok).await
            }
            Err(e) => self.answer(&path, "list", Err(e)).await,
        }
    }

    /// Answers a request whose path broke the rules; the stream is still in
    /// sync, so the connection goes on (after skipping a refused payload).
    async fn refuse_bad_path(&mut self, error: FrameError) -> Result<()> {
        warn!("refused: {error}");
        let is_file = error.is_file_header();
        self.w.send(&Frame::Error { code: ErrorCode::BadPath, message: error.to_string() }).await?;
        if is_file {
            let h = FileHeader::new(WirePath::root(), UNKNOWN_SIZE, 0, Timestamp::default());
            transfer::discard_payload(&mut self.r, &h).await?;
        }
        Ok(())
    }

    fn log_file(&mut self, what: &str, path: &WirePath, size: u64, blake3: &[u8; 32], started: Instant) {
        self.files += 1;
        self.bytes += size;
        let secs = started.elapsed().as_secs_f64();
        let mbps = if secs > 0.0 { size as f64 / secs / 1e6 } else { 0.0 };
        info!(
            path = %path,
            bytes = size,
            secs = format_args!("{secs:.3}"),
            mb_per_s = format_args!("{mbps:.1}"),
            blake3 = %transfer::hex(blake3),
            "{what}"
        );
    }
}

/// Cancels a connection's hashing when the connection ends.
struct CancelOnDrop(Arc<Work>);

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

/// With an allow list, a client must have one of its names on it.
fn admitted(allow: &[String], names: &[String]) -> bool {
    allow.is_empty() || names.iter().any(|n| allow.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_any_certificate_name() {
        let names = ["runner-7".to_owned(), "ci.example.org".to_owned()];
        assert!(admitted(&[], &names));
        assert!(admitted(&["ci.example.org".into()], &names));
        assert!(!admitted(&["runner-8".into()], &names));
        assert!(!admitted(&["runner-8".into()], &[]));
    }
}

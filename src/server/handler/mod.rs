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
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

#[cfg(feature = "s3")]
mod objects;
#[cfg(feature = "s3")]
mod objects_probe;
#[cfg(feature = "s3")]
mod objects_pull;
mod pull;
mod push;

use self::push::{CancelOnDrop, Reply};
use super::gate::{Slot, Ticket};
use super::{Live, Shared};
use crate::auth::Perm;
use crate::budget::{Budget, Charge};
use crate::connection::{FrameReader, FrameWriter, with_timeout};
use crate::error::{Error, Result};
use crate::hashes::{HASH_ALLOWANCE, Work};
use crate::partial::Partial;
use crate::protocol::enroll::ENROLL_ALPN;
use crate::protocol::{ALPN, ErrorCode, FileHeader, Frame, FrameError, Timestamp, UNKNOWN_SIZE, VERSION, WirePath};
#[cfg(feature = "s3")]
use crate::server::storage::Storage;
use crate::store::{GroupSize, StoreError};
use crate::throttle::Throttled;
use crate::tls;
use crate::transfer;

pub(super) type Tls = TlsStream<Throttled<TcpStream>>;

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
        r = with_timeout("TLS handshake", t.handshake, accept(&live, Throttled::new(tcp, shared.bwlimit), addr)) => r,
        // A newer connection needed the place: the oldest unfinished
        // handshakes are the likeliest to be idle sockets of a flood.
        _ = ticket.evicted.cancelled() => {
            tracing::debug!(%addr, "handshake dropped to make room for newer ones");
            return;
        }
    };
    let tls = match accepted {
        Ok(s) => s,
        Err(e) => {
            preauth_warning(addr, &describe(&e));
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(ENROLL_ALPN) {
        // Still an unauthenticated peer to the limits: it keeps its ticket.
        return super::enroll::serve(tls, addr, shared, live, ticket).await;
    }
    drop(ticket);
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
        let key = names.first().cloned().unwrap_or_default();
        let budget = shared.budget_for(&key);
        let shared_after = shared.clone();
        let case_names = shared.storage.case_names().charged_to(budget.clone());
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
            #[cfg(feature = "s3")]
            object_claims: HashMap::new(),
            offers: HashMap::new(),
            offered: (0, 0),
            get_filter: None,
            bad_offer_logged: false,
            case_names,
            budget,
        };
        let result = conn.run().await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => info!(files = conn.files, bytes = conn.bytes, secs = format_args!("{secs:.3}"), "closed"),
            Err(e) => warn!(files = conn.files, bytes = conn.bytes, "closed with error: {}", describe(&e)),
        }
        drop(conn);
        shared_after.release_budget(&key);
    }
    .instrument(span)
    .await
}

/// The TLS handshake, with the configuration the client's hello asks for:
/// enrollment when it offers `xfer-enroll/1` and this server takes
/// enrollments, transfers otherwise (a client offering only enrollment to
/// a server without `--enroll` gets a `no_application_protocol` alert).
async fn accept(live: &Live, tcp: Throttled<TcpStream>, addr: SocketAddr) -> Result<Tls> {
    let lost = |source| Error::ConnectionLost { peer: addr.to_string(), source };
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await.map_err(lost)?;
    let wants_enroll = start.client_hello().alpn().is_some_and(|mut ids| ids.any(|id| id == ENROLL_ALPN));
    let config = match &live.enroll {
        Some(en) if wants_enroll => en.config.clone(),
        _ => live.config.clone(),
    };
    start.into_stream(config).await.map_err(lost)
}

/// Logs why a connection was refused before its peer was known. Anyone
/// can cause these, so they are rate-limited: at most a few lines a second,
/// then one line counting those not logged.
fn preauth_warning(addr: SocketAddr, why: &str) {
    tls::preauth_warn(format_args!("{addr}: refused before TLS completed: {why}"));
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
    /// The same, for partial uploads kept in a bucket.
    #[cfg(feature = "s3")]
    object_claims: HashMap<WirePath, objects::Claim>,
    /// What the client holds, for the files of its next `Get`s, each with
    /// its share of the server's memory budget.
    offers: HashMap<WirePath, (transfer::Held, Charge)>,
    /// `OFFER` frames and bytes received, bounded by the protocol.
    offered: (usize, usize),
    /// What the client's `FILTER` leaves out of its `GET`s, with the
    /// memory it holds charged to the budget.
    get_filter: Option<(crate::walk::Filter, Charge)>,
    /// A bad `OFFER` was logged already (the rest are counted quietly).
    bad_offer_logged: bool,
    /// Paths this connection wrote, to refuse names that differ only by
    /// case where the root's filesystem folds case.
    case_names: crate::store::CaseNames,
    /// This client's share of the server's memory budget.
    budget: Budget,
}

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
            Err(Error::Refused { code: ErrorCode::ShuttingDown, message, .. }) => {
                Some((ErrorCode::ShuttingDown, message.clone()))
            }
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
        // A place in the line for a slot from the start: connections past
        // the handshake always count against a bound.
        let key = names.first().cloned().unwrap_or_default();
        let queued = match self.shared.slots.queue(&key) {
            Ok(q) => q,
            Err(busy) => {
                self.w.queue_preamble();
                return Err(Error::Busy(busy.message(&crate::text::escape(&key))));
            }
        };
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
        drop(queued);
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
                Err(Error::Frame { error, .. }) if error.is_offer() => self.bad_offer(&error)?,
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
                let token = self.token.clone();
                let waited = tokio::select! {
                    r = slots.acquire(&peer, self.shared.timeouts.header * 3) => r,
                    _ = token.cancelled() => {
                        let message = SHUTTING_DOWN.to_owned();
                        return Err(Error::Refused { path: String::new(), code: ErrorCode::ShuttingDown, message });
                    }
                };
                match waited {
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
                let allowed = self.authorize(Perm::Write, &path);
                // A bucket's folders are made in the background, answered in order.
                #[cfg(feature = "s3")]
                if let (Ok(()), Storage::Objects(b)) = (&allowed, &self.shared.storage) {
                    return self.mkdir_object(b.clone(), path).await;
                }
                let r = match allowed {
                    Ok(()) => self.shared.storage.mkdir(&path).await,
                    Err(e) => Err(e),
                };
                match r {
                    // `OK` once the folder is durable: a local one waits for
                    // the next group commit, whose syncs cover it (one
                    // handle kept per filesystem, not per folder).
                    Ok(Some((dev, dir))) => {
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
                    // The store made it durable before answering.
                    Ok(None) => self.answer(&path, "mkdir", Ok(())).await,
                    Err(e) => self.answer(&path, "mkdir", Err(e)).await,
                }
            }
            Frame::Link { path, target } => {
                let r = match self.authorize(Perm::Write, &path).and_then(|()| self.case_names.check(&path)) {
                    Ok(()) => self.shared.storage.link(&path, &target).await,
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    info!(path = %path, target = %crate::text::Safe(&target), "linked");
                }
                self.answer(&path, "link", r).await
            }
            Frame::Filter { patterns } => self.set_filter(&patterns).await,
            Frame::Get { path } => self.get(path).await,
            Frame::List { path } => self.list(path).await,
            Frame::Remove { path, recursive } => {
                let r = match self.authorize(Perm::Delete, &path) {
                    Ok(()) => self.shared.storage.remove(&path, recursive).await,
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

    /// Sends `frame` now, or queues it behind files awaiting their commit.
    async fn reply_in_order(&mut self, frame: Frame) -> Result<()> {
        if self.batch.is_empty() {
            self.w.send(&frame).await
        } else {
            self.batch.push(Reply::Ready(frame));
            Ok(())
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

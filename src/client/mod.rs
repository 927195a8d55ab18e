//! The client: one mutually authenticated TLS connection to a server, and
//! the four operations over it (push, pull, list, remove).
//!
//! Every operation is pipelined: one future writes all requests (and file
//! payloads) while another reads the replies in order, so there is no round
//! trip per file. What to expect next travels from the writer to the reader
//! through a bounded channel, which also bounds how far ahead the writer may
//! run. Outcomes go to a [`Reporter`]; nothing here prints.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::beneath::DirFd;
use crate::connection::{FrameReader, FrameWriter, Timeouts, with_timeout};
use crate::error::{Class, Error, Result};
use crate::meter::Meter;
use crate::progress::{FileReport, Reporter};
use crate::protocol::{ALPN, DEFAULT_PORT, ErrorCode, Frame, Have, VERSION, WirePath};
use crate::tls::{self, Identity, IdentityPaths};
use crate::transfer::{self, FileOutcome, Held, SendOutcome};
use crate::walk::{Item, Walk};

mod pull;

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// DNS name or IP address of the server.
    pub host: String,
    pub port: u16,
    /// The name the server's certificate must carry, when not `host`.
    pub server_name: Option<String>,
    pub identity: IdentityPaths,
    pub timeouts: Timeouts,
    /// Largest file a pull accepts (besides the free-space reserve).
    pub max_size: Option<u64>,
}

impl ClientConfig {
    /// A config for `HOST[:PORT]` (IPv6 as `[::1]:5001` or a bare `::1`).
    pub fn new(target: &str, identity: IdentityPaths) -> Result<ClientConfig> {
        let (host, port) = parse_target(target)?;
        Ok(ClientConfig { host, port, server_name: None, identity, timeouts: Timeouts::default(), max_size: None })
    }
}

/// Splits `HOST[:PORT]`.
pub fn parse_target(s: &str) -> Result<(String, u16)> {
    let bad = || Error::Usage(format!("invalid server '{s}': expected HOST or HOST:PORT (IPv6 as [::1]:5001)"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else if s.matches(':').count() > 1 {
        (s, None) // a bare IPv6 address
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => DEFAULT_PORT,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

type Tls = TlsStream<TcpStream>;

/// An open connection to a server.
pub struct Client {
    r: FrameReader<ReadHalf<Tls>>,
    w: FrameWriter<WriteHalf<Tls>>,
    cfg: ClientConfig,
    /// The server's name from its verified certificate: what partial
    /// downloads from it are filed under.
    server: String,
}

/// Files whose answer to `Probe` a push may wait for at once: enough to
/// hide a long round trip, few enough to bound memory.
const PROBE_AHEAD: usize = 1024;

/// The sources of a push, checked before connecting: each exists, can be
/// read, and has a name to give it on the server. Files and folders are
/// placed as scp places them: `a/b.txt` → `to/b.txt`, `dist/` → `to/dist/…`.
pub struct PushPlan {
    walks: Vec<Walk>,
    /// Where each walk starts, so the tree can be counted for progress.
    starts: Vec<(DirFd, std::ffi::OsString, WirePath)>,
    /// Standard input, sent as this remote file (`xfer push HOST - --to NAME`).
    stdin: Option<WirePath>,
}

impl PushPlan {
    /// Standard input, of unknown length, sent as the remote file `to`.
    pub fn stdin(to: WirePath) -> Result<PushPlan> {
        if to.is_root() {
            return Err(Error::Usage("pushing standard input needs --to NAME, the remote file to write".into()));
        }
        Ok(PushPlan { walks: Vec::new(), starts: Vec::new(), stdin: Some(to) })
    }

    /// Checks `sources` and names them under the remote folder `to`.
    pub fn new(sources: &[PathBuf], to: &WirePath) -> Result<PushPlan> {
        let (mut walks, mut starts) = (Vec::new(), Vec::new());
        for src in sources {
            let cannot = |e: std::io::Error| Error::Usage(format!("cannot push {}: {e}", src.display()));
            let rel = to
                .join(&source_name(src)?)
                .map_err(|error| Error::BadPath { path: src.display().to_string(), error })?;
            // A source named on the command line is followed if it is a
            // link (the user chose it); links inside a tree never are.
            let real = src.canonicalize().map_err(cannot)?;
            let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
                return Err(Error::Usage(format!(
                    "cannot push {}: it has no name to give it on the server",
                    src.display()
                )));
            };
            let dir = DirFd::open_path(parent).map_err(cannot)?;
            walks.push(Walk::entry(&dir, name, rel.clone()).map_err(cannot)?);
            starts.push((dir, name.to_owned(), rel));
        }
        Ok(PushPlan { walks, starts, stdin: None })
    }

    /// Counts the files and bytes to send on a thread of its own, feeding
    /// `meter` as it goes, so a progress display can show totals and an ETA
    /// while the transfer has already started.
    fn count(&self, meter: &Meter) {
        let starts: Vec<_> = self.starts.iter().map(|(d, n, r)| (d.clone(), n.clone(), r.clone())).collect();
        let meter = meter.clone();
        std::thread::spawn(move || {
            let (mut files, mut bytes) = (0u64, 0u64);
            let walks = starts.iter().filter_map(|(dir, name, rel)| Walk::entry(dir, name, rel.clone()).ok());
            for item in walks.flatten() {
                // Everything but folders gets an outcome, so everything
                // but folders counts towards the total the bars show.
                if let Item::Dir { .. } = item {
                    continue;
                }
                files += 1;
                if let Item::File { meta, .. } = item {
                    bytes += meta.size;
                }
                if files % 512 == 0 {
                    if !meter.is_on() {
                        return; // the command is over
                    }
                    meter.counted(files, bytes, false);
                }
            }
            meter.counted(files, bytes, true);
        });
    }
}

/// What the reader must do for the next thing the writer sent.
enum Expect {
    /// A `Have` (or `Error`) answering a `Probe`, to pass to the writer.
    Have(WirePath),
    Dir(WirePath),
    File {
        path: WirePath,
        outcome: SendOutcome,
    },
    Skipped {
        path: String,
        reason: String,
    },
    LocalFailure {
        path: String,
        error: String,
    },
    Removed(WirePath),
}

impl Client {
    /// Connects, completes the TLS handshake and queues the preamble.
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        let id = Identity::load(&cfg.identity)?;
        let connector = TlsConnector::from(id.client_config()?);
        let name = cfg.server_name.clone().unwrap_or_else(|| cfg.host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| Error::Usage(format!("'{name}' is not a valid DNS name or IP address")))?;
        let addr = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        let t = cfg.timeouts;
        let tcp = with_timeout("connect", t.connect, async {
            TcpStream::connect((cfg.host.as_str(), cfg.port))
                .await
                .map_err(|source| Error::Connect { addr: addr.clone(), source })
        })
        .await?;
        // Requests are batched by FrameWriter; Nagle would only add delay.
        let _ = tcp.set_nodelay(true);
        let tls = with_timeout("TLS handshake", t.handshake, async {
            connector
                .connect(server_name, tcp)
                .await
                .map_err(|source| explain(&cfg, Error::ConnectionLost { peer: addr.clone(), source }))
        })
        .await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            let message = "the server did not negotiate the xfer/1 protocol (ALPN): is it an xfer server?".to_owned();
            return Err(Error::Tls { peer: addr, message });
        }
        let certs = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
        let server = certs.map(|c| tls::cert_names(&c)).and_then(|n| n.into_iter().next()).unwrap_or(name);
        let (rd, wr) = tokio::io::split(tls);
        let mut w = FrameWriter::new(wr, addr.clone(), t.idle);
        w.queue_preamble();
        Ok(Client { r: FrameReader::new(rd, addr, t.idle), w, cfg, server })
    }

    /// Sends what `plan` names (see [`PushPlan`]). Each file is probed
    /// first, pipelined ahead of the payloads: the server's answer lets an
    /// identical file be skipped and a partial copy be continued. Paths
    /// `rep` has already reported (an earlier attempt) are left out.
    pub async fn push(&mut self, plan: PushPlan, rep: &mut Reporter) -> Result<()> {
        if rep.meter().is_on() {
            plan.count(rep.meter());
        }
        let done = rep.done_paths();
        let items = transfer::spawn_walk(plan.walks.into_iter().flatten(), crate::budget::Budget::unlimited());
        let (tx, mut rx) = mpsc::channel::<Expect>(4096);
        let (have_tx, have_rx) = mpsc::unbounded_channel();
        let Client { r, w, cfg, .. } = self;
        let stdin = plan.stdin;
        let meter = rep.meter().clone();
        let writer = async move {
            if let Some(path) = stdin {
                let outcome = transfer::send_stream(w, &path, transfer::stdin_chunks(), &meter).await?;
                hand_over(&tx, w, Expect::File { path, outcome }).await?;
            }
            let mut queue = Probed { items, queue: VecDeque::new(), probes: 0, done, have_rx };
            while let Some((item, have)) = queue.next(w, &tx).await? {
                let expect = match item {
                    Item::Dir { rel, meta } => {
                        w.send(&Frame::Dir { path: rel.clone(), mode: meta.mode, mtime: meta.mtime }).await?;
                        Expect::Dir(rel)
                    }
                    // The probe was refused; the reader reported why.
                    Item::File { .. } if have.is_none() => continue,
                    Item::File { rel, dir, name, meta, ahead } => {
                        let held = have.map(|have| Held { size: meta.size, mtime: meta.mtime, have });
                        let outcome = transfer::send_file(w, &rel, &dir, &name, &meter, held.as_ref(), ahead).await?;
                        Expect::File { path: rel, outcome }
                    }
                    Item::Skipped { rel, reason } => Expect::Skipped { path: rel, reason },
                    Item::Failed { rel, error } => Expect::LocalFailure { path: rel, error },
                };
                if !hand_over(&tx, w, expect).await? {
                    break; // the reader failed; its error is the one to report
                }
            }
            w.flush().await
        };
        let reader = read_outcomes(r, &mut rx, cfg.timeouts.header, rep, Some(&have_tx));
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Fetches one remote file and writes it to `out` (standard output) as it
    /// arrives. The BLAKE3 check can only come at the end: a mismatch is an
    /// integrity error after the bytes were written, and the caller must
    /// discard them (the exit code says so).
    pub async fn pull_to<W: tokio::io::AsyncWrite + Unpin + Send>(
        &mut self,
        remote: &WirePath,
        out: W,
        rep: &mut Reporter,
    ) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let writer = async move {
            w.send(&Frame::Get { path: remote.clone() }).await?;
            w.flush().await
        };
        let reader = async {
            greet(r, cfg.timeouts.header).await?;
            let h = match reply(r).await? {
                Frame::File(h) => h,
                Frame::Error { code, message } => return Err(refusal(remote.as_str(), code, message)),
                Frame::Dir { .. } => {
                    return Err(Error::Usage(format!(
                        "{remote} is a folder: only a file can be written to standard output"
                    )));
                }
                Frame::Skipped { reason, .. } => {
                    return Err(Error::Refused {
                        path: remote.to_string(),
                        code: ErrorCode::Denied,
                        message: format!("{remote}: not sent: {reason}"),
                    });
                }
                other => return Err(unexpected(r.peer(), &other)),
            };
            let meter = rep.meter().clone();
            let sink = Some(transfer::WriterSink(out));
            let outcome = transfer::receive_into(r, &h, sink, u64::MAX, &meter, blake3::Hasher::new()).await?;
            let report = match outcome {
                FileOutcome::Ok(got) => FileReport::ok(remote, got.size, &got.blake3),
                FileOutcome::Failed { code, message, bytes } => {
                    let class = if code == ErrorCode::Integrity { Class::Integrity } else { Class::Other };
                    let message = format!("{message}; the bytes already written to standard output must be discarded");
                    FileReport { size: h.size, bytes, ..FileReport::failed(remote, message, class) }
                }
                FileOutcome::PeerError { code, message } => {
                    // The server's ERROR ended the response already.
                    rep.file(refused_report(remote, code, message)?);
                    return Ok(());
                }
            };
            rep.file(report);
            // The response ends with OK after the one file.
            match reply(r).await? {
                Frame::Ok => Ok(()),
                other => Err(unexpected(r.peer(), &other)),
            }
        };
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Lists a folder (or one file) on the server.
    pub async fn list(&mut self, path: &WirePath, rep: &mut Reporter) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let writer = async move {
            w.send(&Frame::List { path: path.clone() }).await?;
            w.flush().await
        };
        let reader = async {
            greet(r, cfg.timeouts.header).await?;
            loop {
                match reply(r).await? {
                    Frame::Entry(e) => rep.entry(&e),
                    Frame::Ok => return Ok(()),
                    Frame::Error { code, message } => return Err(refusal(path.as_str(), code, message)),
                    other => return Err(unexpected(r.peer(), &other)),
                }
            }
        };
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Removes files (and folders, with `recursive`) on the server.
    pub async fn remove(&mut self, paths: &[WirePath], recursive: bool, rep: &mut Reporter) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let (tx, mut rx) = mpsc::channel::<Expect>(4096);
        let writer = async move {
            for p in paths {
                w.send(&Frame::Remove { path: p.clone(), recursive }).await?;
                if !hand_over(&tx, w, Expect::Removed(p.clone())).await? {
                    break;
                }
            }
            w.flush().await
        };
        let reader = read_outcomes(r, &mut rx, cfg.timeouts.header, rep, None);
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Finishes an operation's result: when the connection broke under us,
    /// the server may have said why just before (shutting down, not
    /// admitted), which beats "broken pipe"; TLS errors are explained.
    async fn conclude<T>(&mut self, result: Result<T>) -> Result<T> {
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e @ Error::ConnectionLost { .. }) => match self.server_reason().await {
                Some(reason) => reason,
                None => e,
            },
            Err(e) => e,
        };
        Err(explain(&self.cfg, e))
    }

    /// Reads what is left from the server, briefly, looking for an `Error`.
    async fn server_reason(&mut self) -> Option<Error> {
        let r = &mut self.r;
        let look = async {
            while let Ok(Some(f)) = r.read_frame().await {
                if let Frame::Error { code, message } = f {
                    return Some(refusal("", code, message));
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(1), look).await.ok().flatten()
    }

    /// Ends the session cleanly (TLS close_notify).
    pub async fn close(mut self) -> Result<()> {
        let within = self.cfg.timeouts.shutdown;
        let cfg = self.cfg.clone();
        self.w.shutdown(within).await.map_err(|e| explain(&cfg, e))
    }
}

/// Runs the writer and reader of one operation together. The reader's
/// result decides; if the writer fails first (the server hung up), the
/// reader gets a moment to read the server's reason, which is more useful
/// than "broken pipe".
async fn pipeline<T>(writer: impl Future<Output = Result<()>>, reader: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::pin!(writer, reader);
    tokio::select! {
        r = &mut reader => r,
        w = &mut writer => match w {
            Ok(()) => reader.await,
            Err(we) => match tokio::time::timeout(Duration::from_secs(2), reader).await {
                Ok(Err(re)) => Err(re),
                _ => Err(we),
            },
        },
    }
}

/// Hands the reader what to expect next. When the reader is behind, flush
/// before waiting for it: the replies it waits for may answer requests that
/// still sit in our buffer. `false` means the reader has stopped.
async fn hand_over<W: AsyncWrite + Unpin>(
    tx: &mpsc::Sender<Expect>,
    w: &mut FrameWriter<W>,
    e: Expect,
) -> Result<bool> {
    match tx.try_send(e) {
        Ok(()) => Ok(true),
        Err(mpsc::error::TrySendError::Full(e)) => {
            w.flush().await?;
            Ok(tx.send(e).await.is_ok())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
    }
}

/// The writer's side of probing: walk items with the server's answers to
/// the probes of their files, probing up to [`PROBE_AHEAD`] files ahead of
/// the one being sent so no file waits a round trip.
struct Probed {
    items: mpsc::Receiver<Item>,
    /// Items taken from the walk, in order, not yet sent.
    queue: VecDeque<Item>,
    /// Files among them whose probe is out.
    probes: usize,
    /// Paths an earlier attempt already reported.
    done: crate::progress::PathSet,
    /// The reader's `Have`s, in probe order (`None`: the probe was refused).
    have_rx: mpsc::UnboundedReceiver<Option<Have>>,
}

impl Probed {
    /// The next item to send and, for a file, what the server holds of it.
    /// `Ok(None)` at the end of the walk or if the reader stopped.
    async fn next<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut FrameWriter<W>,
        tx: &mpsc::Sender<Expect>,
    ) -> Result<Option<(Item, Option<Have>)>> {
        // Probes go out in bursts, topped up once half the window is used,
        // so the server can answer many with one look at its disk.
        let refill = self.probes <= PROBE_AHEAD / 2;
        while refill && self.probes < PROBE_AHEAD {
            // Wait on the walk only when nothing else is ready to send.
            let item = if self.queue.is_empty() {
                match transfer::next_item(&mut self.items, w).await? {
                    Some(item) => item,
                    None => break,
                }
            } else {
                match self.items.try_recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            };
            let rel = match &item {
                Item::Dir { rel, .. } | Item::File { rel, .. } => rel.as_str(),
                Item::Skipped { rel, .. } | Item::Failed { rel, .. } => rel.as_str(),
            };
            if self.done.contains(rel) {
                continue;
            }
            if let Item::File { rel, meta, .. } = &item {
                w.send(&Frame::Probe { path: rel.clone(), size: meta.size, mtime: meta.mtime }).await?;
                if !hand_over(tx, w, Expect::Have(rel.clone())).await? {
                    return Ok(None);
                }
                self.probes += 1;
            }
            self.queue.push_back(item);
        }
        let Some(item) = self.queue.pop_front() else { return Ok(None) };
        if !matches!(item, Item::File { .. }) {
            return Ok(Some((item, None)));
        }
        self.probes -= 1;
        let have = match self.have_rx.try_recv() {
            Ok(h) => Some(h),
            Err(_) => {
                // The probe may still sit in our buffer.
                w.flush().await?;
                self.have_rx.recv().await
            }
        };
        Ok(have.map(|h| (item, h)))
    }
}

/// The reader half of push and rm: the server's preamble, then one answer
/// per thing the writer sent, in order. Answers to probes go back to the
/// writer through `haves`.
async fn read_outcomes(
    r: &mut FrameReader<ReadHalf<Tls>>,
    rx: &mut mpsc::Receiver<Expect>,
    header: Duration,
    rep: &mut Reporter,
    haves: Option<&mpsc::UnboundedSender<Option<Have>>>,
) -> Result<()> {
    greet(r, header).await?;
    while let Some(expect) = rx.recv().await {
        read_outcome(r, expect, rep, haves).await?;
    }
    Ok(())
}

/// Reads the server's preamble.
async fn greet(r: &mut FrameReader<ReadHalf<Tls>>, within: Duration) -> Result<()> {
    let theirs = r.read_preamble(within).await?;
    if theirs != VERSION {
        return Err(Error::Version { peer: r.peer().to_owned(), ours: VERSION, theirs });
    }
    Ok(())
}

/// The next frame, where the server must send one.
async fn reply(r: &mut FrameReader<ReadHalf<Tls>>) -> Result<Frame> {
    r.read_frame().await?.ok_or_else(|| Error::ConnectionLost {
        peer: r.peer().to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection before answering",
        ),
    })
}

/// Reads the server's answer to one pushed item, probe or removal and
/// reports it (or, for a probe, hands it to the writer).
async fn read_outcome(
    r: &mut FrameReader<ReadHalf<Tls>>,
    expect: Expect,
    rep: &mut Reporter,
    haves: Option<&mpsc::UnboundedSender<Option<Have>>>,
) -> Result<()> {
    match expect {
        Expect::Skipped { path, reason } => rep.file(FileReport::skipped(path, reason)),
        Expect::LocalFailure { path, error } => rep.file(FileReport::failed(path, error, Class::Other)),
        Expect::File { path, outcome } => read_stored(r, path, outcome, rep).await?,
        Expect::Have(path) => {
            let have = match reply(r).await? {
                Frame::Have(h) => Some(h),
                Frame::Error { code, message } => {
                    rep.file(refused_report(&path, code, message)?);
                    None
                }
                other => return Err(unexpected(r.peer(), &other)),
            };
            if let Some(tx) = haves {
                let _ = tx.send(have);
            }
        }
        Expect::Dir(path) => match reply(r).await? {
            Frame::Ok => rep.dir(path.as_str()),
            Frame::Error { code, message } => rep.file(refused_report(&path, code, message)?),
            other => return Err(unexpected(r.peer(), &other)),
        },
        Expect::Removed(path) => match reply(r).await? {
            Frame::Ok => rep.file(FileReport::done(&path)),
            Frame::Error { code, message } => rep.file(refused_report(&path, code, message)?),
            other => return Err(unexpected(r.peer(), &other)),
        },
    }
    Ok(())
}

/// Reads the server's answer to one pushed file: `STORED` with the hash we
/// sent, or an `ERROR`.
async fn read_stored(
    r: &mut FrameReader<ReadHalf<Tls>>,
    path: WirePath,
    outcome: SendOutcome,
    rep: &mut Reporter,
) -> Result<()> {
    let (size, bytes, sent) = match outcome {
        SendOutcome::NotStarted { reason: error, .. } => {
            rep.file(FileReport::failed(&path, error, Class::Other));
            return Ok(());
        }
        SendOutcome::Same { size, blake3 } => {
            rep.file(FileReport::unchanged(&path, size, &blake3));
            return Ok(());
        }
        SendOutcome::Aborted { size, sent, reason } => (size, sent, Err(reason)),
        SendOutcome::Sent(s) => (s.size, s.size - s.offset, Ok(s)),
    };
    let report = match (reply(r).await?, sent) {
        (Frame::Stored { size: got, blake3 }, Ok(s)) if got == s.size && blake3 == s.blake3 => {
            FileReport { bytes, resumed_from: s.offset, ..FileReport::ok(&path, s.size, &s.blake3) }
        }
        (Frame::Stored { size: got, blake3 }, Ok(s)) => {
            let (theirs, ours) = (transfer::hex(&blake3), transfer::hex(&s.blake3));
            let msg = format!(
                "{path}: the server stored {got} bytes with BLAKE3 {theirs}, but {size} bytes with {ours} were sent"
            );
            FileReport { size, bytes, blake3: Some(ours), ..FileReport::failed(&path, msg, Class::Integrity) }
        }
        (Frame::Error { code: ErrorCode::Aborted, .. }, Err(reason)) => {
            FileReport { size, bytes, ..FileReport::failed(&path, format!("{path}: not sent: {reason}"), Class::Other) }
        }
        (Frame::Error { code, message }, sent) => {
            let blake3 = sent.ok().map(|s| transfer::hex(&s.blake3));
            FileReport { size, bytes, blake3, ..refused_report(&path, code, message)? }
        }
        (other, _) => return Err(unexpected(r.peer(), &other)),
    };
    rep.file(report);
    Ok(())
}

/// A server's `ERROR` about one item, as that item's failure; the classes
/// that concern the whole connection (not admitted, shutting down) end the
/// operation instead.
fn refused_report(path: &WirePath, code: ErrorCode, message: String) -> Result<FileReport> {
    let e = refusal(path.as_str(), code, message);
    // These come last before the server closes: they end the operation.
    if e.class() == Class::Connection || code == ErrorCode::Protocol {
        return Err(e);
    }
    Ok(FileReport::failed(path, e.to_string(), e.class()))
}

/// Turns a server's `Error` frame into an [`Error`] of the right class.
fn refusal(path: &str, code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::NotAdmitted => Error::NotAdmitted(message),
        ErrorCode::Protocol => Error::Protocol { peer: "the server".to_owned(), message },
        // Server messages usually name the path already; don't say it twice.
        _ if message.starts_with(path) => Error::Refused { path: path.to_owned(), code, message },
        _ => Error::Refused { path: path.to_owned(), code, message: format!("{path}: {message}") },
    }
}

fn unexpected(peer: &str, f: &Frame) -> Error {
    Error::protocol(peer, format!("unexpected {} frame", f.name()))
}

/// The name a pushed source gets on the server: its last component, or for
/// `.` and `..` the name of the folder they stand for.
fn source_name(src: &Path) -> Result<String> {
    let name = match src.file_name() {
        Some(n) => n.to_owned(),
        None => src.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_owned())).ok_or_else(|| {
            Error::Usage(format!("cannot push {}: it has no name to give it on the server", src.display()))
        })?,
    };
    name.into_string()
        .map_err(|n| Error::Usage(format!("cannot push {}: the name is not valid UTF-8", n.to_string_lossy())))
}

/// Replaces a bare I/O error that carries a TLS alert or certificate error
/// with a sentence saying what is wrong and how to fix it.
fn explain(cfg: &ClientConfig, e: Error) -> Error {
    match e {
        Error::ConnectionLost { peer, source } => match tls::rustls_error(&source) {
            Some(te) => Error::Tls {
                peer,
                message: tls::explain_for_client(te, cfg.server_name.as_deref().unwrap_or(&cfg.host), &cfg.identity),
            },
            None => Error::ConnectionLost { peer, source },
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_ports() {
        assert_eq!(parse_target("files.example.org").unwrap(), ("files.example.org".into(), 5001));
        assert_eq!(parse_target("h:7").unwrap(), ("h".into(), 7));
        assert_eq!(parse_target("127.0.0.1:9").unwrap(), ("127.0.0.1".into(), 9));
        assert_eq!(parse_target("[::1]:8").unwrap(), ("::1".into(), 8));
        assert_eq!(parse_target("[::1]").unwrap(), ("::1".into(), 5001));
        assert_eq!(parse_target("::1").unwrap(), ("::1".into(), 5001));
        for bad in ["", "h:", "h:x", "[::1", "[::1]x", "h:70000"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_are_named_by_their_last_component() {
        assert_eq!(source_name(Path::new("a/b.txt")).unwrap(), "b.txt");
        assert_eq!(source_name(Path::new("dist/")).unwrap(), "dist");
        let here = std::env::current_dir().unwrap();
        assert_eq!(source_name(Path::new(".")).unwrap(), here.file_name().unwrap().to_str().unwrap());
    }
}

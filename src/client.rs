//! The client: one mutually authenticated TLS connection to a server, and
//! the four operations over it (push, pull, list, remove).
//!
//! Every operation is pipelined: one future writes all requests (and file
//! payloads) while another reads the replies in order, so there is no round
//! trip per file. What to expect next travels from the writer to the reader
//! through a bounded channel, which also bounds how far ahead the writer may
//! run. Outcomes go to a [`Reporter`]; nothing here prints.

use std::collections::{HashMap, HashSet, VecDeque};
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
use crate::partial::{self, Partial, PartialId, RESUMABLE_MIN};
use crate::progress::{FileReport, Reporter, human_bytes};
use crate::protocol::{
    ALPN, DEFAULT_PORT, ErrorCode, FileHeader, Frame, Have, MAX_OFFER_BYTES, MAX_OFFERS, Offer, VERSION, WirePath,
};
use crate::store::{self, GroupSize, Resume, Root, Verified};
use crate::tls::{self, Identity, IdentityPaths};
use crate::transfer::{self, FileOutcome, Held, SendOutcome, Target, blocking};
use crate::walk::{Item, Walk};

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

    /// Fetches files and folders into `out`: `x/b.txt` → `out/b.txt`,
    /// `x/d` → `out/d/…`.
    ///
    /// What `out` already holds is offered first: partial copies an
    /// interrupted pull from this server left (continued where they end),
    /// and whole files (not sent again when the server's have the same
    /// BLAKE3).
    pub async fn pull(&mut self, remotes: &[WirePath], out: &Path, rep: &mut Reporter) -> Result<()> {
        let root = Root::open_pull(out).map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
        // A pull of the whole root receives what the server's root holds:
        // ask what that is first, so that only local files the pull would
        // overwrite are offered (an offer tells the server a file's hash).
        let top = match remotes.iter().any(WirePath::is_root) {
            true => Some(self.top_names().await?),
            false => None,
        };
        let greeted = top.is_some();
        let (server, asked, root2) = (self.server.clone(), remotes.to_vec(), root.clone());
        let mut held = blocking(move || Holdings::gather(&root2, &server, &asked, top.as_ref())).await;
        let Client { r, w, cfg, server } = self;
        let offers: Vec<Offer> = held.offers.drain(..).collect();
        let writer = async move {
            for o in offers {
                w.send(&Frame::Offer(o)).await?;
            }
            for p in remotes {
                w.send(&Frame::Get { path: p.clone() }).await?;
            }
            w.flush().await
        };
        let reader = async {
            if !greeted {
                greet(r, cfg.timeouts.header).await?;
            }
            let mut ctx = PullCtx { root: &root, rep, held: &mut held, server, max_size: cfg.max_size };
            for p in remotes {
                pull_one(r, p, &mut ctx).await?;
            }
            Ok(())
        };
        let result = pipeline(writer, reader).await;
        // Leave no staging folder behind but partial copies worth resuming.
        drop(root);
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

    /// The names at the top of the server's root (this connection's first
    /// exchange: it reads the server's preamble). Empty when the server
    /// refuses to list them; the pull that follows then reports why.
    async fn top_names(&mut self) -> Result<HashSet<String>> {
        self.w.send(&Frame::List { path: WirePath::root() }).await?;
        self.w.flush().await?;
        greet(&mut self.r, self.cfg.timeouts.header).await?;
        let mut names = HashSet::new();
        loop {
            match reply(&mut self.r).await? {
                Frame::Entry(e) => {
                    names.extend(e.path.file_name().map(str::to_owned));
                }
                Frame::Ok | Frame::Error { .. } => return Ok(names),
                other => return Err(unexpected(self.r.peer(), &other)),
            }
        }
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
    done: HashSet<String>,
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

/// What a pull's destination already holds, offered to the server before
/// the `Get`s.
#[derive(Default)]
struct Holdings {
    offers: Vec<Offer>,
    /// Bytes of `OFFER` bodies so far: the protocol bounds them.
    offer_bytes: usize,
    /// Partial copies offered, claimed (locked) until their file arrives.
    partials: HashMap<WirePath, Partial>,
    /// Whole local files offered, with their BLAKE3.
    whole: HashMap<WirePath, [u8; 32]>,
}

impl Holdings {
    /// Looks in `root` for what the `asked` paths would write: partial
    /// copies from `server` (after deleting expired ones), and the files
    /// already there, hashed. Blocking. Best effort: what cannot be read is
    /// simply not offered.
    ///
    /// An offer tells the server a local file's hash, so only files the
    /// pull would overwrite are offered: below the asked paths, for the
    /// root only below the names the server's root holds (`top`), and never
    /// below a dot-name the user did not ask for (`.ssh`, `.env`).
    fn gather(root: &Root, server: &str, asked: &[WirePath], top: Option<&HashSet<String>>) -> Holdings {
        let mut held = Holdings::default();
        let within =
            |p: &WirePath| asked.iter().any(|a| a.file_name().is_none_or(|n| p.components().next() == Some(n)));
        if let Ok(dir) = root.partial_dir() {
            partial::expire(&dir, partial::DEFAULT_TTL);
            for id in partial::list(&dir, server) {
                let Ok(path) = WirePath::parse(&id.path) else { continue };
                if !within(&path) || !held.has_room(&path) {
                    continue;
                }
                if let Ok(Some(p)) = partial::claim(&dir, &id) {
                    let prefix = p.prefix();
                    held.push(Offer { path: path.clone(), size: id.size, mtime: id.mtime(), offset: p.offset, prefix });
                    held.partials.insert(path, p);
                }
            }
        }
        for a in asked {
            // `x/d` lands as `d`; the root's entries land as themselves.
            let target = a.file_name().map_or(Ok(WirePath::root()), WirePath::parse);
            let Some(walk) = target.ok().and_then(|t| root.walk(&t).ok()) else { continue };
            for item in walk {
                let Item::File { rel, dir, name, meta, .. } = item else { continue };
                if !held.has_room(&rel) {
                    return held;
                }
                if !would_receive(&rel, a.is_root(), top) {
                    continue;
                }
                if held.partials.contains_key(&rel) {
                    continue;
                }
                let Ok(mut f) = dir.open_file(&name) else { continue };
                let mut hasher = blake3::Hasher::new();
                if std::io::copy(&mut f, &mut hasher).ok() != Some(meta.size) {
                    continue;
                }
                let prefix = *hasher.finalize().as_bytes();
                held.push(Offer { path: rel.clone(), size: meta.size, mtime: meta.mtime, offset: meta.size, prefix });
                held.whole.insert(rel, prefix);
            }
        }
        held
    }

    /// True while one more offer for `path` stays within the protocol's
    /// bounds on offers per connection (a server cuts off a client past
    /// them).
    fn has_room(&self, path: &WirePath) -> bool {
        self.offers.len() < MAX_OFFERS && self.offer_bytes + Offer::body_len_for(path) <= MAX_OFFER_BYTES
    }

    fn push(&mut self, o: Offer) {
        self.offer_bytes += o.body_len();
        self.offers.push(o);
    }
}

/// True when a pull of an asked path would write local file `rel` (named
/// from the asked path's last component, or from the root's names): not
/// under a dot-name below what was asked, and for the root, under a name
/// the server has.
fn would_receive(rel: &WirePath, asked_root: bool, top: Option<&HashSet<String>>) -> bool {
    let mut parts = rel.components();
    let first = parts.next().unwrap_or_default();
    let first_ok = !asked_root || (!first.starts_with('.') && top.is_some_and(|t| t.contains(first)));
    first_ok && !parts.any(|c| c.starts_with('.'))
}

/// What every file of a pull needs.
struct PullCtx<'a> {
    root: &'a Root,
    rep: &'a mut Reporter,
    held: &'a mut Holdings,
    /// The server's name, which partial copies from it are filed under.
    server: &'a str,
    /// `--max-size`: files larger are refused.
    max_size: Option<u64>,
}

/// Receives everything the server sends for one `Get`. Verified files are
/// installed in groups ([`store::commit_group`]) and reported once durable;
/// any other outcome waits for the group before it, so reports keep the
/// order of the stream.
async fn pull_one(r: &mut FrameReader<ReadHalf<Tls>>, asked: &WirePath, ctx: &mut PullCtx<'_>) -> Result<()> {
    // Items are named from the parent of what was asked; reports name the
    // remote path from the server's root.
    let base = asked.parent().unwrap_or_default();
    let remote = |p: &WirePath| base.join_path(p).map(|p| p.to_string()).unwrap_or_else(|_| p.to_string());
    let meter = ctx.rep.meter().based(base.as_str());
    let mut group = Group::default();
    let result = pull_items(r, asked, ctx, &mut group, &remote, &meter).await;
    // Files that arrived whole and verified are kept, even if the
    // connection failed after them.
    group.commit(ctx.rep, &remote).await;
    result
}

async fn pull_items(
    r: &mut FrameReader<ReadHalf<Tls>>,
    asked: &WirePath,
    ctx: &mut PullCtx<'_>,
    group: &mut Group,
    remote: &impl Fn(&WirePath) -> String,
    meter: &Meter,
) -> Result<()> {
    let mut shape = Shape::default();
    loop {
        // Before waiting on the network, make what arrived durable.
        if !r.has_frame() {
            group.commit(ctx.rep, remote).await;
        }
        let frame = reply(r).await?;
        match &frame {
            Frame::Dir { path, .. } | Frame::Skipped { path, .. } => shape.check(r, asked, path, false)?,
            Frame::File(h) => shape.check(r, asked, &h.path, true)?,
            _ => {}
        }
        if !matches!(frame, Frame::File(_)) {
            group.commit(ctx.rep, remote).await;
        }
        match frame {
            Frame::Dir { path, .. } => {
                check_within(r, asked, &path)?;
                let (root, p) = (ctx.root.clone(), path.clone());
                match blocking(move || root.mkdir(&p)).await {
                    Ok(_) => ctx.rep.dir(&remote(&path)),
                    Err(e) => ctx.rep.file(FileReport::failed(remote(&path), e.message, Class::Other)),
                }
            }
            Frame::File(h) => {
                check_within(r, asked, &h.path)?;
                if h.offset > 0 && h.offset == h.size && ctx.held.whole.contains_key(&h.path) {
                    let report = confirm_whole(r, &h, ctx.held, remote).await?;
                    group.commit(ctx.rep, remote).await;
                    ctx.rep.file(report);
                    continue;
                }
                match pull_file(r, h, ctx, group, remote, meter).await? {
                    Pulled::Grouped => {}
                    Pulled::Failed(report) => {
                        group.commit(ctx.rep, remote).await;
                        ctx.rep.file(report);
                    }
                    Pulled::EndedResponse(report) => {
                        group.commit(ctx.rep, remote).await;
                        ctx.rep.file(report);
                        return Ok(());
                    }
                }
            }
            Frame::Skipped { path, reason } => {
                check_within(r, asked, &path)?;
                ctx.rep.file(FileReport::skipped(remote(&path), reason));
            }
            Frame::Ok => return Ok(()),
            Frame::Error { code, message } => {
                ctx.rep.file(refused_report(asked, code, message)?);
                return Ok(());
            }
            other => return Err(unexpected(r.peer(), &other)),
        }
    }
}

/// The server found our whole copy of `h.path` identical: it sends only
/// `End` with the file's BLAKE3, which must be the one we offered.
async fn confirm_whole(
    r: &mut FrameReader<ReadHalf<Tls>>,
    h: &FileHeader,
    held: &mut Holdings,
    remote: &impl Fn(&WirePath) -> String,
) -> Result<FileReport> {
    let ours = held.whole.remove(&h.path).expect("checked by the caller");
    let path = remote(&h.path);
    match reply(r).await? {
        Frame::End { blake3 } if blake3 == ours => Ok(FileReport::unchanged(&path, h.size, &ours)),
        Frame::End { .. } => Err(Error::protocol(r.peer(), format!("{path}: confirmed a copy we did not offer"))),
        Frame::Abort { reason } => {
            Ok(FileReport::failed(&path, format!("{path}: the server abandoned it: {reason}"), Class::Other))
        }
        other => Err(unexpected(r.peer(), &other)),
    }
}

/// The most payload bytes (counted from 0, so including a resumed prefix)
/// a file of a pull may have: `--max-size`, and what the destination's
/// filesystem can take above its reserve. A file announced larger is
/// refused before any of it is written.
async fn receive_limit(ctx: &PullCtx<'_>, h: &FileHeader, path: &str) -> std::result::Result<u64, FileReport> {
    let root = ctx.root.clone();
    let room = blocking(move || root.room()).await.ok();
    let max = ctx.max_size.unwrap_or(u64::MAX);
    let usable = room.map_or(u64::MAX, |r| r.usable.saturating_add(h.offset));
    let refuse = |message: String| FileReport::failed(path, message, Class::Refused);
    match h.known_size() {
        Some(size) if size > max => {
            Err(refuse(format!("{path}: {} is larger than --max-size {}", human_bytes(size), human_bytes(max))))
        }
        Some(size) if size > usable => {
            let r = room.expect("usable is bounded only with a room");
            Err(refuse(format!(
                "{path}: needs {} but only {} is free here above the {} kept in reserve (5% of the disk, at most 1 GiB)",
                human_bytes(size - h.offset),
                human_bytes(r.usable),
                human_bytes(r.reserve)
            )))
        }
        _ => Ok(max.min(usable)),
    }
}

/// How one file of a pull went.
enum Pulled {
    /// Verified; it waits in the group for its commit and report.
    Grouped,
    /// Failed; to report once the group before it is committed.
    Failed(FileReport),
    /// The server's error in place of the file, which also ends the response.
    EndedResponse(FileReport),
}

/// Receives one file of a pull, continuing the partial copy offered for
/// it if the server chose to.
async fn pull_file(
    r: &mut FrameReader<ReadHalf<Tls>>,
    h: FileHeader,
    ctx: &mut PullCtx<'_>,
    group: &mut Group,
    remote: &impl Fn(&WirePath) -> String,
    meter: &Meter,
) -> Result<Pulled> {
    let claim = ctx.held.partials.remove(&h.path);
    let (resume, prefix) = match claim {
        Some(c) if c.continued_by(&h) => {
            let hasher = c.hasher.clone();
            (Resume::From(Box::new(c)), hasher)
        }
        _ if h.offset > 0 => {
            return Err(Error::protocol(
                r.peer(),
                format!("{}: sent from offset {}, which we did not offer", h.path, h.offset),
            ));
        }
        claim => {
            drop(claim); // the server starts over: release it before replacing it
            let resume = match h.known_size() {
                Some(size) if size >= RESUMABLE_MIN => {
                    Resume::Fresh(PartialId::new(ctx.server, &h.path, size, h.mtime))
                }
                _ => Resume::No,
            };
            (resume, blake3::Hasher::new())
        }
    };
    let (root, p, size) = (ctx.root.clone(), h.path.clone(), h.known_size());
    let near = group.files.last().and_then(Verified::near);
    let path = remote(&h.path);
    // What a server may write here is bounded: --max-size, and the free
    // space above the reserve (the payload starts at `h.offset`).
    let limit = match receive_limit(ctx, &h, &path).await {
        Ok(limit) => limit,
        Err(report) => {
            transfer::discard_payload(r, &h).await?;
            return Ok(Pulled::Failed(FileReport { size: h.size, ..report }));
        }
    };
    let (outcome, staged) = match Target::new(size, near, move |near| root.stage(&p, size, near, resume)).await {
        Ok(target) => transfer::receive_deferred(r, &h, target, limit, meter, prefix).await?,
        Err(e) => {
            // Read and drop the payload; the file cannot be written here.
            let outcome = transfer::receive_file(r, &h, None, limit, meter).await?;
            if let FileOutcome::Ok(got) = outcome {
                let failed = FileReport::failed(&path, e.message, Class::Other);
                return Ok(Pulled::Failed(FileReport { size: got.size, bytes: got.bytes, ..failed }));
            }
            (outcome, None)
        }
    };
    Ok(Pulled::Failed(match (outcome, staged) {
        (FileOutcome::Ok(got), Some(staged)) => {
            group.push(staged, got.size, got.blake3, got.bytes, h.offset);
            if group.full() {
                group.commit(ctx.rep, remote).await;
            }
            return Ok(Pulled::Grouped);
        }
        (FileOutcome::PeerError { code, message }, _) => {
            // The server gave up on this file and on the rest of this GET.
            let e = refusal(&path, code, message);
            let failed = FileReport::failed(&path, e.to_string(), e.class());
            return Ok(Pulled::EndedResponse(FileReport { size: h.size, ..failed }));
        }
        (FileOutcome::Ok(got), None) => FileReport {
            size: got.size,
            bytes: got.bytes,
            ..FileReport::failed(&path, "the received file was lost before it was installed".into(), Class::Other)
        },
        (FileOutcome::Failed { code, message, bytes }, _) => {
            let class = if code == ErrorCode::Integrity { Class::Integrity } else { Class::Other };
            FileReport { size: h.size, bytes, ..FileReport::failed(&path, message, class) }
        }
    }))
}

/// Received, verified files waiting to be made durable together.
#[derive(Default)]
struct Group {
    files: Vec<Verified>,
    /// Size, BLAKE3, payload bytes received and the offset resumed from.
    facts: Vec<(u64, [u8; 32], u64, u64)>,
    size: GroupSize,
}

impl Group {
    fn push(&mut self, staged: Verified, size: u64, blake3: [u8; 32], bytes: u64, resumed_from: u64) {
        self.size.add(&staged, bytes);
        self.files.push(staged);
        self.facts.push((size, blake3, bytes, resumed_from));
    }

    /// Bounds the group so reports, memory and descriptors never wait on
    /// too much.
    fn full(&self) -> bool {
        self.size.full()
    }

    /// Installs the group durably and reports each file.
    async fn commit(&mut self, rep: &mut Reporter, remote: &impl Fn(&WirePath) -> String) {
        if self.files.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.files);
        let facts = std::mem::take(&mut self.facts);
        self.size = GroupSize::default();
        let (results, _) = blocking(move || store::commit_group(files, &[])).await;
        for ((path, r), (size, blake3, bytes, resumed_from)) in results.into_iter().zip(facts) {
            rep.file(match r {
                Ok(()) => FileReport { bytes, resumed_from, ..FileReport::ok(remote(&path), size, &blake3) },
                Err(e) => FileReport { size, bytes, ..FileReport::failed(remote(&path), e.message, Class::Other) },
            });
        }
    }
}

/// What a `GET` response showed of the item asked for: it comes once, and
/// a file is the whole answer (nothing may follow it, nothing below it).
#[derive(Default)]
struct Shape {
    top_seen: bool,
    top_is_file: bool,
}

impl Shape {
    fn check(&mut self, r: &FrameReader<ReadHalf<Tls>>, asked: &WirePath, got: &WirePath, file: bool) -> Result<()> {
        let bad = |what: &str| Err(Error::protocol(r.peer(), format!("{what} in answer to a request for '{asked}'")));
        if self.top_is_file {
            return bad(&format!("sent '{got}' after the file"));
        }
        // The item itself: `Get x/d` names it `d` (the root has none).
        if asked.file_name().is_some() && got.components().nth(1).is_none() {
            if std::mem::replace(&mut self.top_seen, true) {
                return bad(&format!("sent '{got}' twice"));
            }
            self.top_is_file = file;
        }
        Ok(())
    }
}

/// A server may only send what was asked for: `Get x/d` yields `d/…`.
fn check_within(r: &FrameReader<ReadHalf<Tls>>, asked: &WirePath, got: &WirePath) -> Result<()> {
    let ok = match asked.file_name() {
        None => !got.is_root(),
        Some(name) => got.components().next() == Some(name),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::protocol(r.peer(), format!("sent '{got}' in answer to a request for '{asked}'")))
    }
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

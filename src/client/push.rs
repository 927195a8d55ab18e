//! A push, on the client: the plan of what to send, each file probed
//! ahead of its payload (so identical files are skipped and partial copies
//! continued), and the server's answers read in order by a second future.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncWrite, ReadHalf};
use tokio::sync::mpsc;

use super::{Client, Tls, greet, pipeline, refused_report, reply, unexpected};
use crate::beneath::DirFd;
use crate::connection::{FrameReader, FrameWriter};
use crate::error::{Class, Error, Result};
use crate::meter::Meter;
use crate::progress::{FileReport, Reporter};
use crate::protocol::{ErrorCode, Frame, Have, WirePath};
use crate::transfer::{self, Held, SendOutcome};
use crate::walk::{Filter, Item, Walk};

impl Client {
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
        let links = cfg.links;
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
                    Item::Link { rel, target } if links => {
                        w.send(&Frame::Link { path: rel.clone(), target: target.clone() }).await?;
                        Expect::Link { path: rel, target }
                    }
                    Item::Link { rel, .. } => Expect::Skipped { path: rel.to_string(), reason: NO_LINKS.into() },
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
}

/// Why a link is skipped without `--links`.
pub const NO_LINKS: &str = "symbolic link (not followed; --links sends it as a link)";

/// Files whose answer to `Probe` a push may wait for at once: enough to
/// hide a long round trip, few enough to bound memory.
const PROBE_AHEAD: usize = 1024;

/// The sources of a push, checked before connecting: each exists, can be
/// read, and has a name to give it on the server. Files and folders are
/// placed as scp places them: `a/b.txt` → `to/b.txt`, `dist/` → `to/dist/…`.
pub struct PushPlan {
    pub(super) walks: Vec<Walk>,
    /// Where each walk starts, so the tree can be counted for progress.
    starts: Vec<(DirFd, std::ffi::OsString, WirePath)>,
    /// Standard input, sent as this remote file (`xfer push HOST - --to NAME`).
    pub(super) stdin: Option<WirePath>,
    /// What `--exclude`/`--include` leave out, and the components of the
    /// destination folder before what the user named.
    filter: Option<Filter>,
    strip: usize,
    /// What patterns see before the names, when not what the walk names
    /// (a folder's contents sent as a new folder: what the user named).
    prefix: Option<String>,
}

impl PushPlan {
    /// Standard input, of unknown length, sent as the remote file `to`.
    pub fn stdin(to: WirePath) -> Result<PushPlan> {
        if to.is_root() {
            return Err(Error::Usage("pushing standard input needs --to NAME, the remote file to write".into()));
        }
        Ok(PushPlan { walks: Vec::new(), starts: Vec::new(), stdin: Some(to), filter: None, strip: 0, prefix: None })
    }

    /// Checks `sources` and names them under the remote folder `to`.
    pub fn new(sources: &[PathBuf], to: &WirePath) -> Result<PushPlan> {
        PushPlan::filtered(sources, to, None)
    }

    /// [`PushPlan::new`], leaving out what `filter` excludes (matched
    /// against each path as named below `to`: `dist/app.js` for `dist`).
    pub fn filtered(sources: &[PathBuf], to: &WirePath, filter: Option<Filter>) -> Result<PushPlan> {
        let mut named = Vec::new();
        for src in sources {
            let rel = to
                .join(&source_name(src)?)
                .map_err(|error| Error::BadPath { path: src.display().to_string(), error })?;
            named.push((src.clone(), rel));
        }
        PushPlan::named(named, filter, to.components().count())
    }

    /// The entries of one local folder, sent into the remote folder `to`
    /// (`xfer sync DIR HOST:TO`): none is followed if it is a link, and a
    /// link is sent with `--links` when it stays inside `to`, the tree.
    /// Patterns match names as if they began with `named_as` when given
    /// (`cp site HOST:www`: `site/...`), else from inside `to` (a sync).
    pub fn contents(
        entries: &[PathBuf],
        to: &WirePath,
        filter: Option<Filter>,
        named_as: Option<&str>,
    ) -> Result<PushPlan> {
        let (mut walks, mut starts) = (Vec::new(), Vec::new());
        for src in entries {
            let cannot = |e: std::io::Error| Error::Usage(format!("cannot push {}: {e}", src.display()));
            let (Some(parent), Some(name)) = (src.parent(), src.file_name()) else {
                return Err(Error::Usage(format!("cannot push {}: it has no name", src.display())));
            };
            let rel = to
                .join(&source_name(src)?)
                .map_err(|error| Error::BadPath { path: src.display().to_string(), error })?;
            let dir = DirFd::open_path(&parent.canonicalize().map_err(cannot)?).map_err(cannot)?;
            let walk = Walk::entry_in(&dir, name, rel.clone(), to.clone()).map_err(cannot)?;
            walks.push(walk.filtered_as(filter.clone(), to.components().count(), named_as.map(str::to_owned)));
            starts.push((dir, name.to_owned(), rel));
        }
        let prefix = named_as.map(str::to_owned);
        Ok(PushPlan { walks, starts, stdin: None, filter, strip: to.components().count(), prefix })
    }

    /// One file sent as the remote file `target` (`xfer cp a.txt host:b.txt`).
    pub fn file_as(src: &Path, target: WirePath) -> Result<PushPlan> {
        if !src.is_file() {
            return Err(Error::Usage(format!("cannot push {} as a file: it is not one", src.display())));
        }
        PushPlan::named(vec![(src.to_owned(), target)], None, 0)
    }

    /// Each source sent under the remote name given with it.
    fn named(named: Vec<(PathBuf, WirePath)>, filter: Option<Filter>, strip: usize) -> Result<PushPlan> {
        let (mut walks, mut starts) = (Vec::new(), Vec::new());
        for (src, rel) in named {
            let cannot = |e: std::io::Error| Error::Usage(format!("cannot push {}: {e}", src.display()));
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
            walks.push(Walk::entry(&dir, name, rel.clone()).map_err(cannot)?.filtered(filter.clone(), strip));
            starts.push((dir, name.to_owned(), rel));
        }
        Ok(PushPlan { walks, starts, stdin: None, filter, strip, prefix: None })
    }

    /// Counts the files and bytes to send on a thread of its own, feeding
    /// `meter` as it goes, so a progress display can show totals and an ETA
    /// while the transfer has already started.
    fn count(&self, meter: &Meter) {
        let starts: Vec<_> = self.starts.iter().map(|(d, n, r)| (d.clone(), n.clone(), r.clone())).collect();
        let (meter, filter, strip, prefix) = (meter.clone(), self.filter.clone(), self.strip, self.prefix.clone());
        std::thread::spawn(move || {
            let (mut files, mut bytes) = (0u64, 0u64);
            let walks = starts
                .iter()
                .filter_map(|(dir, name, rel)| Walk::entry(dir, name, rel.clone()).ok())
                .map(|w| w.filtered_as(filter.clone(), strip, prefix.clone()));
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
pub(super) enum Expect {
    /// A `Have` (or `Error`) answering a `Probe`, to pass to the writer.
    Have(WirePath),
    Dir(WirePath),
    /// `OK` (or `ERROR`) answering a `Link`.
    Link {
        path: WirePath,
        target: String,
    },
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

/// Hands the reader what to expect next. When the reader is behind, flush
/// before waiting for it: the replies it waits for may answer requests that
/// still sit in our buffer. `false` means the reader has stopped.
pub(super) async fn hand_over<W: AsyncWrite + Unpin>(
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
                Item::Dir { rel, .. } | Item::File { rel, .. } | Item::Link { rel, .. } => rel.as_str(),
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
pub(super) async fn read_outcomes(
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
        Expect::Link { path, target } => match reply(r).await? {
            Frame::Ok => rep.file(FileReport::linked(&path, &target)),
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
            rep.meter().settled(size);
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

/// The name a pushed source gets on the server: its last component, or for
/// `.` and `..` the name of the folder they stand for.
pub fn source_name(src: &Path) -> Result<String> {
    let name = match src.file_name() {
        Some(n) => n.to_owned(),
        None => src.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_owned())).ok_or_else(|| {
            Error::Usage(format!("cannot push {}: it has no name to give it on the server", src.display()))
        })?,
    };
    name.into_string()
        .map_err(|n| Error::Usage(format!("cannot push {}: the name is not valid UTF-8", n.to_string_lossy())))
}

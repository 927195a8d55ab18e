//! A pull, on the client: what the destination already holds is offered
//! (only what the pull would overwrite), then each `GET`'s answer is
//! checked (only what was asked, a file as the whole answer), received
//! within `--max-size` and the disk's reserve, and installed by group
//! commit.

use std::collections::HashSet;
use std::path::Path;

use tokio::io::ReadHalf;

use super::answer::{Shape, Totals, check_within, excluded_item};
use super::offers::Holdings;
use super::{Client, Tls, greet, pipeline, refusal, refused_report, reply, unexpected};
use crate::connection::FrameReader;
use crate::error::{Class, Error, Result};
use crate::meter::Meter;
use crate::partial::{PartialId, RESUMABLE_MIN};
use crate::progress::{FileReport, Reporter, human_bytes};
use crate::protocol::{ErrorCode, FileHeader, Frame, MAX_OFFERS, Offer, WirePath};
use crate::store::{self, GroupSize, Resume, Root, Verified};
use crate::transfer::{self, FileOutcome, Target, blocking};

impl Client {
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
        let filter = self.cfg.filter.clone();
        let mut held = blocking(move || Holdings::gather(&root2, &server, &asked, top.as_ref(), filter.as_ref())).await;
        let Client { r, w, cfg, server } = self;
        let offers: Vec<Offer> = held.offers.drain(..).collect();
        let filter = cfg.filter.as_ref().map(|f| f.text().to_owned());
        let writer = async move {
            for o in offers {
                w.send(&Frame::Offer(o)).await?;
            }
            if let Some(patterns) = filter {
                w.send(&Frame::Filter { patterns }).await?;
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
            if cfg.filter.is_some() {
                match reply(r).await? {
                    Frame::Ok => {}
                    Frame::Error { code, message } => return Err(refusal("", code, message)),
                    other => return Err(unexpected(r.peer(), &other)),
                }
            }
            let mut ctx = PullCtx {
                root: &root,
                rep,
                held: &mut held,
                server,
                max_size: cfg.max_size,
                links: cfg.links,
                filter: cfg.filter.clone(),
                sync_tree: cfg.sync_tree,
                known_dirs: None,
                case_names: root.case_names(),
                totals: Totals::default(),
            };
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
                // Names past the offer bound would never be offered under:
                // not kept, however many a server sends.
                Frame::Entry(e) if names.len() < MAX_OFFERS => {
                    names.extend(e.path.file_name().map(str::to_owned));
                }
                Frame::Link { path, .. } if names.len() < MAX_OFFERS => {
                    names.extend(path.file_name().map(str::to_owned));
                }
                Frame::Entry(_) | Frame::Link { .. } => {}
                Frame::Ok => return Ok(names),
                Frame::Error { code, message } => {
                    // Busy, shutting down, not admitted: the pull cannot go on.
                    let e = refusal("", code, message);
                    return if e.class() == Class::Connection { Err(e) } else { Ok(names) };
                }
                other => return Err(unexpected(self.r.peer(), &other)),
            }
        }
    }
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
    /// Make the links the server sends (`--links`).
    links: bool,
    /// What `--exclude` leaves out (the server was told; this is checked).
    filter: Option<crate::walk::Filter>,
    /// ... when they lead inside the destination, not only the entry asked.
    sync_tree: bool,
    /// A path whose folders were last found to exist.
    known_dirs: Option<WirePath>,
    /// Paths written, to refuse names that differ only by case where the
    /// destination's filesystem folds case.
    case_names: crate::store::CaseNames,
    totals: Totals,
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
    group.commit(ctx.rep, ctx.root.dir(), &remote).await;
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
    let mut first = true;
    loop {
        // Before waiting on the network, make what arrived durable.
        if !r.has_frame() {
            group.commit(ctx.rep, ctx.root.dir(), remote).await;
        }
        let frame = reply(r).await?;
        // A total may come first, and only first.
        let was_first = std::mem::take(&mut first);
        if was_first {
            ctx.totals.answer(matches!(frame, Frame::Total { .. }));
        }
        match &frame {
            Frame::Dir { path, .. } | Frame::Skipped { path, .. } | Frame::Link { path, .. } => {
                shape.check(r, asked, path, false)?
            }
            Frame::File(h) => shape.check(r, asked, &h.path, true)?,
            _ => {}
        }
        if !matches!(frame, Frame::File(_)) {
            group.commit(ctx.rep, ctx.root.dir(), remote).await;
        }
        // What `--exclude` leaves out is never written here, whatever a
        // server that ignored the FILTER sends.
        if let Some(path) = excluded_item(&frame, ctx.filter.as_ref()) {
            if let Frame::File(h) = &frame {
                transfer::discard_payload(r, h).await?;
            }
            let why = "the server sent what --exclude leaves out; not written".to_owned();
            ctx.rep.file(FileReport::failed(remote(&path), why, Class::Other));
            continue;
        }
        match frame {
            Frame::Dir { path, .. } => {
                check_within(r, asked, &path)?;
                if let Err(report) = room_for_folders(ctx, &path, path.components().count(), &remote(&path)).await {
                    ctx.rep.file(report);
                    continue;
                }
                let (root, p) = (ctx.root.clone(), path.clone());
                match blocking(move || root.mkdir(&p)).await {
                    Ok(_) => ctx.rep.dir(&remote(&path)),
                    Err(e) => ctx.rep.file(FileReport::failed(remote(&path), e.message, Class::Other)),
                }
            }
            Frame::File(h) => {
                check_within(r, asked, &h.path)?;
                if h.offset > 0 && h.offset == h.size && ctx.held.whole.contains_key(&h.path) {
                    let report = confirm_whole(r, &h, ctx.held, ctx.root.dir(), remote).await?;
                    meter.settled(h.size);
                    group.commit(ctx.rep, ctx.root.dir(), remote).await;
                    ctx.rep.file(report);
                    continue;
                }
                match pull_file(r, h, ctx, group, remote, meter).await? {
                    Pulled::Grouped => {}
                    Pulled::Failed(report) => {
                        group.commit(ctx.rep, ctx.root.dir(), remote).await;
                        ctx.rep.file(report);
                    }
                    Pulled::EndedResponse(report) => {
                        group.commit(ctx.rep, ctx.root.dir(), remote).await;
                        ctx.rep.file(report);
                        return Ok(());
                    }
                }
            }
            Frame::Link { path, target } => {
                check_within(r, asked, &path)?;
                let report = make_link(ctx, asked, &path, &target, &remote(&path)).await;
                ctx.rep.file(report);
            }
            Frame::Skipped { path, reason } => {
                check_within(r, asked, &path)?;
                ctx.rep.file(FileReport::skipped(remote(&path), reason));
            }
            Frame::Total { files, bytes } if was_first => {
                ctx.totals.add(files, bytes, meter);
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

/// Makes a link the server sent, with `--links` and when its target leads
/// inside what was asked for (the server checks it too, but a client
/// trusts no server to keep its links in the tree).
async fn make_link(ctx: &mut PullCtx<'_>, asked: &WirePath, path: &WirePath, target: &str, shown: &str) -> FileReport {
    if !ctx.links {
        return FileReport::skipped(shown, "symbolic link (not made; --links makes it)".into());
    }
    // Out of the destination: no server of ours sends that.
    if let Err(why) = crate::links::acceptable(&WirePath::root(), path, target, None) {
        return FileReport::failed(shown, format!("refused a link from the server: {why}"), Class::Other);
    }
    let top = crate::links::pulled_tree(asked, ctx.sync_tree);
    if !crate::links::within(&top, path, target) {
        let why = format!("symbolic link not made: it points outside the tree pulled ({target})");
        return FileReport::skipped(shown, why);
    }
    if let Err(e) = ctx.case_names.check(path) {
        return FileReport::failed(shown, e.message, Class::Refused);
    }
    let (root, p, t) = (ctx.root.clone(), path.clone(), target.to_owned());
    match blocking(move || root.link(&p, &t)).await {
        Ok(()) => FileReport {
            local: Some(ctx.root.dir().join(path.as_str()).display().to_string()),
            ..FileReport::linked(shown, target)
        },
        Err(e) => FileReport::failed(shown, e.message, Class::Other),
    }
}

/// The server found our whole copy of `h.path` identical: it sends only
/// `End` with the file's BLAKE3, which must be the one we offered.
async fn confirm_whole(
    r: &mut FrameReader<ReadHalf<Tls>>,
    h: &FileHeader,
    held: &mut Holdings,
    out: &Path,
    remote: &impl Fn(&WirePath) -> String,
) -> Result<FileReport> {
    let ours = held.whole.remove(&h.path).expect("checked by the caller");
    let path = remote(&h.path);
    match reply(r).await? {
        Frame::End { blake3 } if blake3 == ours => Ok(FileReport {
            local: Some(out.join(h.path.as_str()).display().to_string()),
            ..FileReport::unchanged(&path, h.size, &ours)
        }),
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
async fn receive_limit(ctx: &mut PullCtx<'_>, h: &FileHeader, path: &str) -> std::result::Result<u64, FileReport> {
    let parents = h.path.components().count().saturating_sub(1);
    room_for_folders(ctx, &h.path, parents, path).await?;
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

/// Disk a new folder may take: one block (of the common 4 KiB).
const FOLDER_COST: u64 = 4096;

/// Refuses to create `folders` folders for `p` unless the space above the
/// reserve could hold them all new: otherwise a server could fill the disk
/// with folders (or empty files under deep new parents), which no file
/// size bounds.
async fn room_for_folders(
    ctx: &mut PullCtx<'_>,
    p: &WirePath,
    folders: usize,
    path: &str,
) -> std::result::Result<(), FileReport> {
    let need = folders as u64 * FOLDER_COST;
    // Only new folders take space: when they all exist (the common case,
    // files after the first in a folder), nothing to check.
    let parent: Vec<&str> = p.components().take(folders).collect();
    if folders == 0 || ctx.known_dirs.as_ref().is_some_and(|k| k.components().take(folders).eq(parent.iter().copied()))
    {
        return Ok(());
    }
    let (root, at) = (ctx.root.clone(), p.clone());
    if blocking(move || root.has_dirs(&at, folders)).await {
        ctx.known_dirs = Some(p.clone());
        return Ok(());
    }
    let root = ctx.root.clone();
    match blocking(move || root.room()).await {
        Ok(room) if room.usable < need => Err(FileReport::failed(
            path,
            format!(
                "{path}: no room for its folders: only {} is free here above the {} kept in reserve \
                 (5% of the disk, at most 1 GiB)",
                human_bytes(room.usable),
                human_bytes(room.reserve)
            ),
            Class::Refused,
        )),
        _ => Ok(()),
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
    let limit = match ctx.case_names.check(&h.path) {
        Ok(()) => receive_limit(ctx, &h, &path).await,
        Err(e) => Err(FileReport::failed(&path, e.message, Class::Refused)),
    };
    let limit = match limit {
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
                group.commit(ctx.rep, ctx.root.dir(), remote).await;
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
    async fn commit(&mut self, rep: &mut Reporter, out: &Path, remote: &impl Fn(&WirePath) -> String) {
        if self.files.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.files);
        let facts = std::mem::take(&mut self.facts);
        self.size = GroupSize::default();
        let (results, _) = blocking(move || store::commit_group(files, &[])).await;
        for ((path, r), (size, blake3, bytes, resumed_from)) in results.into_iter().zip(facts) {
            rep.file(match r {
                Ok(()) => FileReport {
                    bytes,
                    resumed_from,
                    local: Some(out.join(path.as_str()).display().to_string()),
                    ..FileReport::ok(remote(&path), size, &blake3)
                },
                Err(e) => FileReport { size, bytes, ..FileReport::failed(remote(&path), e.message, Class::Other) },
            });
        }
    }
}

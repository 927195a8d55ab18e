//! `--dry-run`: what a push or an rm would do, asked of the server without
//! changing anything on either side.
//!
//! A push's dry run sends only `PROBE`s (the question every push asks
//! before a file) and reads the answers: a file the server holds whole with
//! the same BLAKE3 is unchanged, one it holds in part would be resumed, any
//! other would be sent. No `FILE` or `DIR` is ever sent. An rm's dry run
//! lists each path instead of removing it. A pull's lists the asked paths
//! (folders by folder) and compares each file with what `--out` holds by
//! size and mtime, as rsync's quick check does: no `GET` is sent.

use std::path::Path;

use tokio::sync::mpsc;

use super::sync::{MAX_LISTED, is_child};
use super::{Client, PushPlan, greet, pipeline, refusal, reply, unexpected};
use crate::error::{Class, Error, Result};
use crate::progress::{FileReport, Reporter, Status};
use crate::protocol::{Frame, ListEntry, WirePath};
use crate::transfer::{self, blocking};
use crate::walk::Item;

/// What the reader must do with the next answer.
enum Asked {
    File(Item),
    Other(FileReport),
}

impl Client {
    /// Reports what pushing `plan` would send, resume or leave as it is.
    pub async fn push_dry_run(&mut self, plan: PushPlan, rep: &mut Reporter) -> Result<()> {
        if plan.stdin.is_some() {
            return Err(Error::Usage("--dry-run cannot tell what standard input would send".into()));
        }
        let items = transfer::spawn_walk(plan.walks.into_iter().flatten(), crate::budget::Budget::unlimited());
        let (tx, mut rx) = mpsc::channel::<Asked>(1024);
        let Client { r, w, cfg, .. } = self;
        let links = cfg.links;
        let writer = async move {
            let mut items = items;
            loop {
                // Probes waiting in the buffer go out before any wait.
                if items.is_empty() {
                    w.flush().await?;
                }
                let Some(item) = items.recv().await else { break };
                let asked = match item {
                    Item::File { ref rel, meta, .. } => {
                        w.send(&Frame::Probe { path: rel.clone(), size: meta.size, mtime: meta.mtime }).await?;
                        Asked::File(item)
                    }
                    Item::Dir { .. } => continue,
                    Item::Link { rel, .. } if !links => {
                        Asked::Other(FileReport::skipped(rel, super::push::NO_LINKS.into()))
                    }
                    Item::Link { rel, target } => Asked::Other(FileReport {
                        status: crate::progress::Status::Would,
                        ..FileReport::linked(rel, &target)
                    }),
                    Item::Skipped { rel, reason } => Asked::Other(FileReport::skipped(rel, reason)),
                    Item::Failed { rel, error } => Asked::Other(FileReport::failed(rel, error, Class::Other)),
                };
                if tx.capacity() == 0 {
                    w.flush().await?; // the reader waits on answers to these
                }
                if tx.send(asked).await.is_err() {
                    break;
                }
            }
            w.flush().await
        };
        let reader = async {
            greet(r, cfg.timeouts.header).await?;
            while let Some(asked) = rx.recv().await {
                let item = match asked {
                    Asked::Other(report) => {
                        rep.file(report);
                        continue;
                    }
                    Asked::File(item) => item,
                };
                let Item::File { rel, dir, name, meta, .. } = item else { continue };
                let have = match reply(r).await? {
                    Frame::Have(h) => h,
                    Frame::Error { code, message } => {
                        let e = refusal(rel.as_str(), code, message);
                        rep.file(FileReport::failed(rel.as_str(), e.to_string(), e.class()));
                        continue;
                    }
                    other => return Err(unexpected(r.peer(), &other)),
                };
                let report = match have.complete {
                    Some(theirs) => {
                        // Same size there: the same bytes only if the hashes agree.
                        let ours = blocking(move || {
                            let mut f = dir.open_file(&name)?;
                            let mut hasher = blake3::Hasher::new();
                            std::io::copy(&mut f, &mut hasher)?;
                            Ok::<_, std::io::Error>(*hasher.finalize().as_bytes())
                        })
                        .await;
                        match ours {
                            Ok(ours) if ours == theirs => FileReport::unchanged(rel.as_str(), meta.size, &ours),
                            Ok(_) => would_send(&rel, meta.size, 0),
                            Err(e) => FileReport::failed(rel.as_str(), format!("{rel}: {e}"), Class::Other),
                        }
                    }
                    None => would_send(&rel, meta.size, have.offset),
                };
                rep.file(report);
            }
            Ok(())
        };
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }

    /// Reports what removing `paths` would remove, by listing each.
    pub async fn remove_dry_run(&mut self, paths: &[WirePath], recursive: bool, rep: &mut Reporter) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        let writer = async move {
            for p in paths {
                w.send(&Frame::List { path: p.clone() }).await?;
            }
            w.flush().await
        };
        let reader = async {
            greet(r, cfg.timeouts.header).await?;
            for p in paths {
                let mut entries = Vec::new();
                let refused = loop {
                    match reply(r).await? {
                        Frame::Entry(e) => entries.push(e),
                        Frame::Link { .. } => {}
                        Frame::Ok => break None,
                        Frame::Error { code, message } => break Some(refusal(p.as_str(), code, message)),
                        other => return Err(unexpected(r.peer(), &other)),
                    }
                };
                let is_file = matches!(&entries[..], [only] if only.path == *p && !only.is_dir);
                rep.file(match refused {
                    Some(e) => FileReport::failed(p.as_str(), e.to_string(), e.class()),
                    None if is_file || recursive => FileReport { status: Status::Would, ..FileReport::done(p) },
                    None => FileReport::failed(
                        p.as_str(),
                        format!("{p}: is a folder: pass -r to remove it and everything in it"),
                        Class::Refused,
                    ),
                });
            }
            Ok(())
        };
        let result = pipeline(writer, reader).await;
        self.conclude(result).await
    }
}

impl Client {
    /// Reports what pulling `remotes` into `out` would receive.
    pub async fn pull_dry_run(&mut self, remotes: &[WirePath], out: &Path, rep: &mut Reporter) -> Result<()> {
        let Client { r, w, cfg, .. } = self;
        greet_after_list(w, r, cfg.timeouts.header).await?;
        for asked in remotes {
            // Items land named from the asked path's parent, as in a pull;
            // patterns see them so named.
            let base = asked.parent().unwrap_or_default();
            let excluded =
                |p: &WirePath, dir: bool| cfg.filter.as_ref().is_some_and(|f| f.excludes(named_from(&base, p), dir));
            let top = crate::links::pulled_tree(asked, cfg.sync_tree);
            let mut folders = RemoteFolders::new(asked.clone());
            while let Some((folder, listing)) = folders.next(w, r, rep).await? {
                for (path, target) in listing.links.iter().filter(|(p, _)| is_child(&folder, p) && !excluded(p, false))
                {
                    let rel = WirePath::parse(named_from(&base, path)).unwrap_or_default();
                    rep.file(would_link(path, target, crate::links::within(&top, &rel, target), cfg.links));
                }
                // Only what is below the folder listed (or the file asked
                // for itself) counts; anything else is the server's
                // invention. What the server would leave out is not
                // received, not walked into.
                let own =
                    |e: &&ListEntry| (e.path == folder || is_child(&folder, &e.path)) && !excluded(&e.path, e.is_dir);
                for e in listing.entries.iter().filter(own) {
                    match e.is_dir {
                        true if e.path != folder => folders.push(e.path.clone()),
                        true => {}
                        false => rep.file(would_receive(e, &out.join(named_from(&base, &e.path)))),
                    }
                }
            }
        }
        let result = Ok(());
        self.conclude(result).await
    }
}

/// `p` as a pull names it: from `base`, the parent of what was asked.
fn named_from<'a>(base: &WirePath, p: &'a WirePath) -> &'a str {
    p.as_str().strip_prefix(base.as_str()).unwrap_or(p.as_str()).trim_start_matches('/')
}

/// What a pull would do with a link the server lists.
fn would_link(path: &WirePath, target: &str, inside: bool, links: bool) -> FileReport {
    match inside {
        true if links => FileReport { status: Status::Would, ..FileReport::linked(path, target) },
        true => FileReport::skipped(path, "symbolic link (not made; --links makes it)".into()),
        false => {
            FileReport::skipped(path, format!("symbolic link not made: it points outside the tree pulled ({target})"))
        }
    }
}

/// What a pull would do with a file the server lists, landing at `local`:
/// nothing when `local` has its size and mtime (rsync's quick check).
fn would_receive(e: &ListEntry, local: &Path) -> FileReport {
    let same = std::fs::symlink_metadata(local)
        .is_ok_and(|m| m.is_file() && m.len() == e.size && crate::walk::Meta::from(&m).mtime.secs == e.mtime.secs);
    if same {
        let why = "already here with the same size and mtime; nothing received".to_owned();
        FileReport { size: e.size, ..FileReport::skipped(e.path.as_str(), why) }
    } else {
        FileReport { local: Some(local.display().to_string()), ..would_send(&e.path, e.size, 0) }
    }
}

/// The folders of a server tree, each listed once: a server naming a
/// folder again cannot loop the client, and one naming entries without
/// end is cut off at [`MAX_LISTED`] (the client keeps what it lists). A
/// folder the server will not list is reported and left out.
pub(super) struct RemoteFolders {
    top: WirePath,
    pending: Vec<WirePath>,
    seen: std::collections::HashSet<WirePath>,
    listed: usize,
}

impl RemoteFolders {
    pub(super) fn new(top: WirePath) -> RemoteFolders {
        RemoteFolders { pending: vec![top.clone()], top, seen: Default::default(), listed: 0 }
    }

    /// A folder to list later.
    pub(super) fn push(&mut self, folder: WirePath) {
        self.pending.push(folder);
    }

    /// The next folder and what the server listed in it.
    pub(super) async fn next(
        &mut self,
        w: &mut crate::connection::FrameWriter<tokio::io::WriteHalf<super::Tls>>,
        r: &mut crate::connection::FrameReader<tokio::io::ReadHalf<super::Tls>>,
        rep: &mut Reporter,
    ) -> Result<Option<(WirePath, Listing)>> {
        while let Some(folder) = self.pending.pop() {
            if !self.seen.insert(folder.clone()) {
                continue;
            }
            let listing = match list_one(w, r, &folder).await? {
                Ok(listing) => listing,
                Err(e) => {
                    rep.file(FileReport::failed(folder.as_str(), e.to_string(), e.class()));
                    continue;
                }
            };
            self.listed += listing.len();
            if self.listed > MAX_LISTED {
                let message =
                    format!("{}: more than {MAX_LISTED} entries listed; a tree this large is refused", self.top);
                return Err(Error::protocol(r.peer(), message));
            }
            return Ok(Some((folder, listing)));
        }
        Ok(None)
    }
}

/// Sends the preamble's answer check with nothing queued: the first LIST
/// goes with it.
pub(super) async fn greet_after_list(
    w: &mut crate::connection::FrameWriter<tokio::io::WriteHalf<super::Tls>>,
    r: &mut crate::connection::FrameReader<tokio::io::ReadHalf<super::Tls>>,
    within: std::time::Duration,
) -> Result<()> {
    w.flush().await?;
    greet(r, within).await
}

/// What one `LIST` answered: files and folders, and links with targets.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub entries: Vec<crate::protocol::ListEntry>,
    pub links: Vec<(WirePath, String)>,
}

impl Listing {
    pub fn len(&self) -> usize {
        self.entries.len() + self.links.len()
    }
}

/// One `LIST` and its answer: the entries, or the server's refusal.
pub(super) async fn list_one(
    w: &mut crate::connection::FrameWriter<tokio::io::WriteHalf<super::Tls>>,
    r: &mut crate::connection::FrameReader<tokio::io::ReadHalf<super::Tls>>,
    path: &WirePath,
) -> Result<std::result::Result<Listing, Error>> {
    w.send(&Frame::List { path: path.clone() }).await?;
    w.flush().await?;
    let mut listing = Listing::default();
    loop {
        match reply(r).await? {
            Frame::Entry(e) => listing.entries.push(e),
            Frame::Link { path, target } => listing.links.push((path, target)),
            Frame::Ok => return Ok(Ok(listing)),
            Frame::Error { code, message } => return Ok(Err(refusal(path.as_str(), code, message))),
            other => return Err(unexpected(r.peer(), &other)),
        }
    }
}

/// A file a push would send (from `offset`, when it would resume).
fn would_send(rel: &WirePath, size: u64, offset: u64) -> FileReport {
    FileReport {
        path: rel.to_string(),
        size,
        blake3: None,
        bytes: size - offset.min(size),
        resumed_from: offset,
        status: Status::Would,
        error: None,
        class: Class::Other,
        local: None,
        link: None,
    }
}

//! `--dry-run`: what a push or an rm would do, asked of the server without
//! changing anything on either side.
//!
//! A push's dry run sends only `PROBE`s (the question every push asks
//! before a file) and reads the answers: a file the server holds whole with
//! the same BLAKE3 is unchanged, one it holds in part would be resumed, any
//! other would be sent. No `FILE` or `DIR` is ever sent. An rm's dry run
//! lists each path instead of removing it.

use tokio::sync::mpsc;

use super::{Client, PushPlan, greet, pipeline, refusal, reply, unexpected};
use crate::error::{Class, Error, Result};
use crate::progress::{FileReport, Reporter, Status};
use crate::protocol::{Frame, WirePath};
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
    }
}

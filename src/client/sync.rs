//! `xfer sync --delete`, on the client: what a server folder holds that the
//! source does not, found by listing it folder by folder, and removed (or,
//! with `--dry-run`, only named). The caller runs this only after every
//! transfer of the sync succeeded.

use std::collections::{BTreeSet, HashSet};

use super::dry_run::{RemoteFolders, greet_after_list, list_one};
use super::{Client, refusal, reply, unexpected};
use crate::error::Result;
use crate::progress::{FileReport, Reporter, Status};
use crate::protocol::{Frame, WirePath};
use crate::walk::Filter;

/// What a path names on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    Folder,
    File,
    Missing,
}

impl Client {
    /// Whether `path` is a folder, a file or nothing on the server (what
    /// scp's `cp x HOST:PATH` needs to know to put `x` in it or at it).
    pub async fn remote_kind(&mut self, path: &WirePath) -> Result<RemoteKind> {
        let Client { r, w, cfg, .. } = self;
        let asked = async {
            greet_after_list(w, r, cfg.timeouts.header).await?;
            Ok(match list_one(w, r, path).await? {
                Ok(l) if matches!(&l.entries[..], [e] if e.path == *path && !e.is_dir) => RemoteKind::File,
                Ok(_) => RemoteKind::Folder,
                Err(crate::error::Error::Refused { code: crate::protocol::ErrorCode::NotFound, .. }) => {
                    RemoteKind::Missing
                }
                Err(e) => return Err(e),
            })
        }
        .await;
        self.conclude(asked).await
    }
}

/// A server folder's tree, as [`Client::list_tree`] found it.
#[derive(Debug, Default)]
pub struct Tree {
    /// Paths relative to the folder, with whether each is a folder.
    pub entries: Vec<(String, bool)>,
    /// The links among them, with their targets.
    pub links: Vec<(String, String)>,
}

/// Most entries a listing of a server folder keeps: a server naming
/// entries without end cannot grow the client's memory without end.
pub const MAX_LISTED: usize = 4_000_000;

impl Client {
    /// Every file, folder and link below `dir` on the server, named
    /// relative to `dir` (`a`, `a/b.txt`), with whether it is a folder;
    /// and the links again with their targets. A folder that cannot be
    /// listed is reported and left out.
    pub async fn list_tree(&mut self, dir: &WirePath, rep: &mut Reporter) -> Result<Tree> {
        let Client { r, w, cfg, .. } = self;
        greet_after_list(w, r, cfg.timeouts.header).await?;
        let (mut out, mut links) = (Vec::new(), Vec::new());
        let mut folders = RemoteFolders::new(dir.clone());
        while let Some((folder, listing)) = folders.next(w, r, rep).await? {
            // A file answers a LIST with itself: not a folder to match.
            if listing.entries.iter().any(|e| e.path == folder && !e.is_dir) {
                return Err(crate::error::Error::Usage(format!(
                    "{folder} is a file on the server, not a folder: sync makes folders match (`xfer cp` copies files)"
                )));
            }
            // Links are entries like files (made with --links, removed as
            // links by --delete).
            for (path, target) in listing.links {
                if let Some(rel) = relative(dir, &path).filter(|_| is_child(&folder, &path)) {
                    out.push((rel.clone(), false));
                    links.push((rel, target));
                }
            }
            for e in listing.entries {
                // Only the listed folder's own children count.
                if !is_child(&folder, &e.path) {
                    continue;
                }
                let Some(rel) = relative(dir, &e.path) else { continue };
                if e.is_dir {
                    folders.push(e.path.clone());
                }
                out.push((rel, e.is_dir));
            }
        }
        Ok(Tree { entries: out, links })
    }

    /// Removes from the server folder `dir` what `keep` (paths relative to
    /// `dir`) does not hold, except what `filter` excludes (left alone, as
    /// rsync does): the topmost such paths, folders with what they hold.
    /// With `dry_run`, only reports them.
    pub async fn delete_extra(
        &mut self,
        dir: &WirePath,
        keep: &HashSet<String>,
        filter: Option<&Filter>,
        dry_run: bool,
        rep: &mut Reporter,
    ) -> Result<()> {
        let tree = self.list_tree(dir, rep).await?;
        let extra = extra(&tree.entries, keep, filter);
        for (rel, is_dir) in extra {
            let path = WirePath::parse(&rel)
                .and_then(|p| dir.join_path(&p))
                .map_err(|e| crate::error::Error::protocol(self.r.peer(), e))?;
            if dry_run {
                rep.file(FileReport { status: Status::Would, ..FileReport::done(&path) });
                continue;
            }
            self.w.send(&Frame::Remove { path: path.clone(), recursive: is_dir }).await?;
            self.w.flush().await?;
            match reply(&mut self.r).await? {
                Frame::Ok => rep.file(FileReport::done(&path)),
                Frame::Error { code, message } => {
                    let e = refusal(path.as_str(), code, message);
                    rep.file(FileReport::failed(path.as_str(), e.to_string(), e.class()));
                }
                other => return Err(unexpected(self.r.peer(), &other)),
            }
        }
        let result = Ok(());
        self.conclude(result).await
    }
}

/// True when `path` is directly inside `folder`.
pub(super) fn is_child(folder: &WirePath, path: &WirePath) -> bool {
    path.parent().is_some_and(|p| p == *folder)
}

/// `path` relative to `dir`, if it is below it.
fn relative(dir: &WirePath, path: &WirePath) -> Option<String> {
    if dir.is_root() {
        return Some(path.to_string());
    }
    let rest = path.as_str().strip_prefix(dir.as_str())?.strip_prefix('/')?;
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// The topmost paths of `tree` that `keep` lacks and `filter` does not
/// protect, in order.
pub fn extra(tree: &[(String, bool)], keep: &HashSet<String>, filter: Option<&Filter>) -> Vec<(String, bool)> {
    let sorted: BTreeSet<(String, bool)> = tree.iter().cloned().collect();
    let excluded: HashSet<&str> = match filter {
        Some(f) => sorted.iter().filter(|(r, d)| f.excludes(r, *d)).map(|(r, _)| r.as_str()).collect(),
        None => HashSet::new(),
    };
    // The folders above anything the patterns protect.
    let mut holding: HashSet<&str> = HashSet::new();
    for rel in &excluded {
        let mut at = *rel;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if !holding.insert(parent) {
                break;
            }
            at = parent;
        }
    }
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut removed: HashSet<&str> = HashSet::new();
    for (rel, is_dir) in &sorted {
        // Below a folder already on the list: it goes with it (looked up
        // by ancestors, so a large tree costs its depth per entry).
        let mut at = rel.as_str();
        let mut inside = false;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if removed.contains(parent) {
                inside = true;
                break;
            }
            at = parent;
        }
        if inside || keep.contains(rel) || excluded.contains(rel.as_str()) {
            continue;
        }
        // A folder holding something the patterns protect is not removed
        // whole: what it holds is looked at one by one instead.
        if *is_dir && holding.contains(rel.as_str()) {
            continue;
        }
        if *is_dir {
            removed.insert(rel.as_str());
        }
        out.push((rel.clone(), *is_dir));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_paths_are_the_topmost_the_source_lacks_and_excludes_protect() {
        let tree: Vec<(String, bool)> = [
            ("a", false),
            ("old", true),
            ("old/x", false),
            ("old/y", true),
            ("old/y/z", false),
            ("keep", true),
            ("keep/gone", false),
            ("cache.tmp", false),
        ]
        .iter()
        .map(|(p, d)| (p.to_string(), *d))
        .collect();
        let keep: HashSet<String> = ["a", "keep"].iter().map(|s| s.to_string()).collect();
        let filter = Filter::new(&["*.tmp".into()], &[], &[]).unwrap();
        let got = extra(&tree, &keep, filter.as_ref());
        assert_eq!(got, [("keep/gone".to_string(), false), ("old".to_string(), true)]);
    }

    /// A folder the source lacks that holds a protected file is not
    /// removed whole (a review found `old/important.tmp` deleted with it).
    #[test]
    fn a_folder_holding_an_excluded_file_is_pruned_around_it() {
        let tree: Vec<(String, bool)> =
            [("old", true), ("old/important.tmp", false), ("old/x", false), ("old/d", true)]
                .iter()
                .map(|(p, d)| (p.to_string(), *d))
                .collect();
        let filter = Filter::new(&["*.tmp".into()], &[], &[]).unwrap();
        let got = extra(&tree, &HashSet::new(), filter.as_ref());
        assert_eq!(got, [("old/d".to_string(), true), ("old/x".to_string(), false)]);
        // An exception inside an excluded folder is still excluded, as in git.
        let filter = Filter::new(&["cache/".into()], &["keep".into()], &[]).unwrap().unwrap();
        assert!(
            filter.excludes("cache/keep", false) && filter.excludes("cache", true) && !filter.excludes("keep", false)
        );
    }
}

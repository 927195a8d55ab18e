//! `xfer sync SOURCE DEST`: make a folder on one side match a folder on the
//! other, rsync `-a` style. Only what differs moves (the push or pull
//! underneath skips files already there with the same BLAKE3); with
//! `--delete`, what the source lacks is removed from the destination, and
//! only once every transfer succeeded.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Args;

use super::cp::{Remote, parse_remote};
use super::session::{remote_path, with_client};
use super::{ClientArgs, FilterArgs, Habits, TransferArgs, transfer};
use crate::beneath::DirFd;
use crate::error::{Class, Error};
use crate::progress::{FileReport, Op, Output, Reporter, Status};
use crate::protocol::WirePath;
use crate::store::STAGING_DIR;
use crate::walk::{Filter, Item, Walk};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The source folder; it or DEST is on a server, written HOST:DIR
    /// (HOST:PORT:DIR, [v6addr]:PORT:DIR).
    pub source: String,
    /// The folder made to match SOURCE.
    pub dest: String,
    /// Also remove from DEST what SOURCE does not have (not what --exclude
    /// matches), and only if every transfer succeeded.
    #[arg(long)]
    pub delete: bool,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub habits: Habits,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `xfer sync`.
pub(super) async fn sync(a: &SyncArgs, output: Output) -> anyhow::Result<()> {
    let (source, dest) = (&a.source, &a.dest);
    match (parse_remote(source), parse_remote(dest)) {
        (None, Some(to)) => up(a, Path::new(source), &to, output).await,
        (Some(from), None) => down(a, &from, Path::new(dest), output).await,
        (Some(_), Some(_)) => {
            Err(Error::Usage("both sides are remote: sync works between this machine and a server".into()).into())
        }
        (None, None) => Err(Error::Usage(
            "neither side is remote: write the server's side as HOST:DIR, e.g. `xfer sync dist files.example.org:dist`"
                .into(),
        )
        .into()),
    }
}

/// A local folder to a server's: push its contents into the remote folder,
/// then remove what the remote folder has beyond them.
async fn up(a: &SyncArgs, local: &Path, to: &Remote, output: Output) -> anyhow::Result<()> {
    if !local.is_dir() {
        return Err(Error::Usage(format!(
            "sync makes a folder match another: {} is not a folder here (`xfer cp` copies files)",
            local.display()
        ))
        .into());
    }
    let filter = a.filter.build()?;
    let entries = folder_entries(local, a.client.links)?;
    if !entries.is_empty() {
        // An error here (any file failed) ends the sync before any removal.
        transfer::push(&to.target, &entries, &to.path, filter.clone(), a.transfer.retry, &a.client, output).await?;
    }
    if !a.delete {
        return Ok(());
    }
    let keep = local_tree(local, filter.as_ref())?.into_iter().map(|(rel, _)| rel).collect::<HashSet<_>>();
    let dir = remote_path(&to.path)?;
    let dry_run = a.client.dry_run;
    with_client(&to.target, &a.client, Op::Remove, output, 0, |c, rep| {
        let (dir, keep, filter) = (dir.clone(), keep.clone(), filter.clone());
        Box::pin(async move { c.delete_extra(&dir, &keep, filter.as_ref(), dry_run, rep).await })
    })
    .await
}

/// A server's folder to a local one: pull what the remote folder holds
/// into it, then remove what the local folder has beyond that.
async fn down(a: &SyncArgs, from: &Remote, local: &Path, output: Output) -> anyhow::Result<()> {
    let filter = a.filter.build()?;
    let dir = remote_path(&from.path)?;
    let tree = Arc::new(Mutex::new(crate::client::Tree::default()));
    let got = tree.clone();
    with_client(&from.target, &a.client, Op::List, Output::Silent, a.transfer.retry, |c, rep| {
        let (dir, got) = (dir.clone(), got.clone());
        Box::pin(async move {
            let listed = c.list_tree(&dir, rep).await?;
            *got.lock().unwrap_or_else(|e| e.into_inner()) = listed;
            Ok(())
        })
    })
    .await?;
    let crate::client::Tree { entries: tree, links } =
        std::mem::take(&mut *tree.lock().unwrap_or_else(|e| e.into_inner()));
    if !a.client.dry_run {
        std::fs::create_dir_all(local).map_err(|e| Error::io(format!("cannot create {}", local.display()), e))?;
    }
    // Links at the top are not pulled (a GET never follows a link): they
    // are made here from the listing, the way a pull makes deeper ones.
    let excluded = |rel: &str, is_dir: bool| filter.as_ref().is_some_and(|f| f.excludes(rel, is_dir));
    let top_links: Vec<&(String, String)> =
        links.iter().filter(|(rel, _)| !rel.contains('/') && !excluded(rel, false)).collect();
    let top: Vec<String> = tree
        .iter()
        .filter(|(rel, is_dir)| {
            !rel.contains('/') && !excluded(rel, *is_dir) && !top_links.iter().any(|(l, _)| l == rel)
        })
        .map(|(rel, _)| if dir.is_root() { rel.clone() } else { format!("{dir}/{rel}") })
        .collect();
    if !top.is_empty() {
        let limits = a.transfer.limits(filter.clone());
        transfer::pull(&from.target, &top, local, limits, a.transfer.retry, &a.client, output).await?;
    }
    make_top_links(&top_links, local, a.client.links, a.client.dry_run, output)?;
    if !a.delete || !local.is_dir() {
        return Ok(());
    }
    let keep: HashSet<String> = tree.into_iter().map(|(rel, _)| rel).collect();
    // A name the walk could not carry exactly (not UTF-8) is never a
    // candidate: its lossy spelling might be another file's name.
    let exact: Vec<(String, bool)> =
        local_tree(local, None)?.into_iter().filter(|(rel, _)| !rel.contains('\u{FFFD}')).collect();
    // What the patterns leave out is not synced: never removed either.
    let extra = crate::client::extra_paths(&exact, &keep, filter.as_ref());
    remove_local(local, &extra, a.client.dry_run, output)
}

/// A local folder's own entries, sorted, as a walk inside it sees them: a
/// link is not followed (taken as a link with `links`, else reported as
/// deeper ones are), and the staging area's name is left out.
pub(super) fn folder_entries(local: &Path, links: bool) -> Result<Vec<PathBuf>, Error> {
    let mut entries: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(local).map_err(|e| Error::io(format!("cannot read {}", local.display()), e))? {
        let e = e.map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?;
        let name = e.file_name();
        if name.to_str().is_some_and(|n| n.eq_ignore_ascii_case(STAGING_DIR)) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() || t.is_file() || (t.is_symlink() && links) => entries.push(e.path()),
            Ok(t) if t.is_symlink() => eprintln!(
                "xfer: skipped {}: {}",
                crate::text::escape(&e.path().display().to_string()),
                crate::client::NO_LINKS
            ),
            _ => eprintln!(
                "xfer: skipped {}: not a regular file or folder",
                crate::text::escape(&e.path().display().to_string())
            ),
        }
    }
    entries.sort();
    Ok(entries)
}

/// The links directly in the server folder, made in `local` with
/// `--links` when they lead inside it (reported as a pull reports them).
fn make_top_links(
    links: &[&(String, String)],
    local: &Path,
    make: bool,
    dry_run: bool,
    output: Output,
) -> Result<(), Error> {
    if links.is_empty() {
        return Ok(());
    }
    let mut rep = Reporter::new(output, Op::Pull);
    rep.set_dry_run(dry_run);
    let root = (make && !dry_run)
        .then(|| crate::store::Root::open_pull(local))
        .transpose()
        .map_err(|e| Error::io(format!("cannot open {}", local.display()), e))?;
    for (rel, target) in links {
        let Ok(path) = WirePath::parse(rel) else { continue };
        let report = match crate::links::acceptable(&WirePath::root(), &path, target, None) {
            _ if !make => FileReport::skipped(rel, "symbolic link (not made; --links makes it)".into()),
            Err(why) => FileReport::failed(rel, format!("refused a link from the server: {why}"), Class::Other),
            Ok(()) => match &root {
                None => FileReport { status: Status::Would, ..FileReport::linked(rel, target) },
                Some(root) => match root.link(&path, target) {
                    Ok(()) => FileReport::linked(rel, target),
                    Err(e) => FileReport::failed(rel, e.message, Class::Other),
                },
            },
        };
        rep.file(report);
    }
    if output == Output::Json {
        return Ok(()); // one summary per command in JSON: the pull's
    }
    rep.finish().map(drop)
}

/// Every entry below `local` (links and other non-files included, as
/// themselves), relative to it, with whether it is a folder; the pull
/// staging area left out.
fn local_tree(local: &Path, filter: Option<&Filter>) -> Result<Vec<(String, bool)>, Error> {
    let dir = DirFd::open_path(local).map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?;
    let walk = Walk::contents(dir, Some(STAGING_DIR))
        .map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?
        .filtered(filter.cloned(), 0);
    Ok(walk
        .map(|item| match item {
            Item::Dir { rel, .. } => (rel.to_string(), true),
            Item::File { rel, .. } | Item::Link { rel, .. } => (rel.to_string(), false),
            Item::Skipped { rel, .. } | Item::Failed { rel, .. } => (rel, false),
        })
        .collect())
}

/// Removes `extra` (relative to `local`; folders with what they hold,
/// links as links), or with `dry_run` only names them.
fn remove_local(local: &Path, extra: &[(String, bool)], dry_run: bool, output: Output) -> anyhow::Result<()> {
    let mut rep = Reporter::new(output, Op::Remove);
    rep.set_dry_run(dry_run);
    let top = DirFd::open_path(local).map_err(|e| Error::io(format!("cannot open {}", local.display()), e))?;
    for (rel, is_dir) in extra {
        let path = local.join(rel);
        if dry_run {
            rep.file(FileReport { status: Status::Would, ..FileReport::done(rel) });
            continue;
        }
        // Through open folders, refusing links on the way (one swapped in
        // meanwhile cannot lead outside DEST); the last name is removed as
        // what it is, a link as a link.
        let parts: Vec<&str> = rel.split('/').collect();
        let (name, parents) = parts.split_last().expect("split gives one part at least");
        let removed = top.descend(parents.iter().copied(), false).and_then(|dir| {
            let name = std::ffi::OsStr::new(name);
            if *is_dir { dir.remove_tree(name) } else { dir.unlink(name) }
        });
        rep.file(match removed {
            Ok(()) => FileReport::done(rel),
            Err(e) => FileReport::failed(rel, format!("cannot remove {}: {e}", path.display()), Class::Other),
        });
    }
    rep.finish()?;
    Ok(())
}

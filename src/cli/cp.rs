//! `xfer cp SOURCE... DEST`, as scp users write it: exactly one side is
//! remote, `HOST:PATH` (`HOST:PORT:PATH` for another port,
//! `[v6addr]:PORT:PATH` for IPv6). A push or a pull underneath; the one
//! thing they cannot do alone, giving the copy another name, is done here.

use std::path::{Path, PathBuf};

use clap::Args;

use super::session::{Limits, remote_path, with_client};
use super::{ClientArgs, FilterArgs, Habits, TransferArgs, transfer};
use crate::client::RemoteKind;
use crate::error::Error;
use crate::progress::{Op, Output};

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Sources, then the destination; exactly one side remote, written
    /// HOST:PATH (HOST:PORT:PATH for another port, [v6addr]:PORT:PATH for
    /// IPv6). A local name with a colon in it is written ./a:b.
    #[arg(required = true, num_args = 2.., value_name = "SOURCE... DEST")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub habits: Habits,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One side of a copy on a server.
#[derive(Debug, PartialEq, Eq)]
pub struct Remote {
    /// `HOST[:PORT]` as the other commands take it.
    pub target: String,
    /// The path on the server (empty: its root).
    pub path: String,
}

/// `HOST:PATH`, `HOST:PORT:PATH` or `[v6addr]:PORT:PATH`; `None` for a
/// local path (one starting with `/` or `.`, or with a `/` before its
/// first colon, as scp decides).
pub fn parse_remote(arg: &str) -> Option<Remote> {
    if arg.starts_with(['/', '.']) {
        return None;
    }
    let with_port = |host: String, after: &str| {
        let (port, path) = match after.split_once(':') {
            Some((p, rest)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (Some(p), rest),
            _ => (None, after),
        };
        let target = port.map_or(host.clone(), |p| format!("{host}:{p}"));
        Remote { target, path: path.to_owned() }
    };
    if let Some(rest) = arg.strip_prefix('[') {
        let (addr, after) = rest.split_once("]:")?;
        return Some(with_port(format!("[{addr}]"), after));
    }
    let (host, after) = arg.split_once(':')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some(with_port(host.to_owned(), after))
}

const FORMS: &str = "write the remote side as HOST:PATH (HOST:PORT:PATH for another port, \
                     [v6addr]:PORT:PATH for IPv6), e.g. `xfer cp dist/ files.example.org:artifacts/` \
                     or `xfer cp files.example.org:artifacts/app.tar.gz .`";

/// Runs `xfer cp`.
pub(super) async fn cp(a: &mut CpArgs, output: Output) -> anyhow::Result<()> {
    let all = a.paths.clone();
    let (dest, sources) = all.split_last().expect("clap asks for two or more");
    let remote_sources: Vec<Option<Remote>> = sources.iter().map(|s| parse_remote(s)).collect();
    let all_local = remote_sources.iter().all(Option::is_none);
    let all_remote = remote_sources.iter().all(Option::is_some);
    match parse_remote(dest) {
        Some(to) if all_local => push(a, sources, &to, output).await,
        None if all_remote => {
            let remotes: Vec<Remote> = remote_sources.into_iter().flatten().collect();
            pull(a, &remotes, dest, output).await
        }
        Some(_) if all_remote => {
            Err(Error::Usage(format!("both sides are remote: xfer copies between this machine and a server; {FORMS}"))
                .into())
        }
        _ if all_local => Err(Error::Usage(format!("neither side is remote: {FORMS}")).into()),
        _ => {
            Err(Error::Usage(format!("the sources mix local and remote paths: copy one way at a time; {FORMS}")).into())
        }
    }
}

/// Local sources to `to`, as scp places them: into the folder `to` names
/// when it ends with `/`, several sources go there, or it is a folder on
/// the server; else the one source takes its name (a file written as that
/// file, a folder's contents as that new folder).
async fn push(a: &mut CpArgs, sources: &[String], to: &Remote, output: Output) -> anyhow::Result<()> {
    let paths: Vec<PathBuf> = sources.iter().map(PathBuf::from).collect();
    let filter = a.filter.build()?;
    let named = paths.len() == 1 && !to.path.is_empty() && !to.path.ends_with('/') && !to.path.ends_with("/.");
    let kind = match named {
        true => remote_kind(a, to).await?,
        false => RemoteKind::Folder,
    };
    let source = &paths[0];
    match kind {
        RemoteKind::Folder => {
            transfer::push(&to.target, &paths, &to.path, filter, a.transfer.retry, &a.client, output).await
        }
        RemoteKind::File if source.is_dir() => Err(Error::Usage(format!(
            "{}:{} is a file on the server: a folder cannot be copied over it (end the destination with / to copy \
             into a folder)",
            to.target, to.path
        ))
        .into()),
        _ if source.is_dir() => {
            // A new folder named `to`: the source folder's contents go
            // there, its links may lead anywhere inside it.
            let entries = super::sync::folder_entries(source, a.client.links)?;
            if entries.is_empty() {
                return Err(Error::Usage(format!("{} is empty: there is nothing to copy", source.display())).into());
            }
            a.client.sync_tree = true;
            a.client.contents_named_as = crate::client::source_name(source).ok();
            transfer::push(&to.target, &entries, &to.path, filter, a.transfer.retry, &a.client, output).await
        }
        _ => {
            // The one file, unless a pattern leaves it out.
            let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if filter.is_some_and(|f| f.excludes(&name, false)) {
                return Ok(());
            }
            transfer::push_as(&to.target, source, &to.path, a.transfer.retry, &a.client, output).await
        }
    }
}

/// What `to` names on the server, asked before a one-source copy.
async fn remote_kind(a: &CpArgs, to: &Remote) -> anyhow::Result<RemoteKind> {
    let path = remote_path(&to.path)?;
    let found = std::sync::Arc::new(std::sync::Mutex::new(RemoteKind::Missing));
    let got = found.clone();
    with_client(&to.target, &a.client, Op::List, Output::Silent, a.transfer.retry, |c, _| {
        let (path, got) = (path.clone(), got.clone());
        Box::pin(async move {
            let kind = c.remote_kind(&path).await?;
            *got.lock().unwrap_or_else(|e| e.into_inner()) = kind;
            Ok(())
        })
    })
    .await?;
    Ok(*found.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Remote sources to the local `dest`: into that folder when it is one
/// (or ends with `/`, or several sources go there), else as that name.
async fn pull(a: &CpArgs, remotes: &[Remote], dest: &str, output: Output) -> anyhow::Result<()> {
    let target = &remotes[0].target;
    if remotes.iter().any(|r| &r.target != target) {
        return Err(Error::Usage("the sources are on different servers: copy from one at a time".into()).into());
    }
    let mut paths: Vec<String> = remotes.iter().map(|r| r.path.clone()).collect();
    let limits = a.transfer.limits(a.filter.build()?);
    let dest_path = Path::new(dest);
    if dest == "-" {
        paths.push("-".into());
        return transfer::pull(target, &paths, Path::new("."), limits, 0, &a.client, output).await;
    }
    if dest_path.is_dir() || dest.ends_with('/') || paths.len() > 1 {
        return transfer::pull(target, &paths, dest_path, limits, a.transfer.retry, &a.client, output).await;
    }
    pull_as(a, target, &paths[0], dest_path, limits, output).await
}

/// One remote file or folder copied to the new local name `dest`: pulled
/// into a fresh folder beside it, then renamed into place whole, so `dest`
/// never holds a partial copy and nothing else beside it is touched.
async fn pull_as(
    a: &CpArgs,
    target: &str,
    remote: &str,
    dest: &Path,
    limits: Limits,
    output: Output,
) -> anyhow::Result<()> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut random = [0u8; 6];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let tmp = parent.join(format!(".xfer-cp-{}", crate::enroll::code::hex(&random)));
    if a.client.dry_run {
        // Nothing is written, so nothing is renamed: what would arrive.
        return transfer::pull(target, &[remote.to_owned()], &tmp, limits, 0, &a.client, output).await;
    }
    let result = transfer::pull(target, &[remote.to_owned()], &tmp, limits, a.transfer.retry, &a.client, output).await;
    let moved = result.and_then(|()| {
        // What the pull wrote: the remote item's own name, or for the
        // server's root, the whole folder.
        let got = match Path::new(remote.trim_end_matches('/')).file_name() {
            Some(name) if !matches!(remote.trim_end_matches('/'), "" | ".") => tmp.join(name),
            _ => tmp.clone(),
        };
        std::fs::rename(&got, dest).map_err(|e| anyhow::anyhow!("cannot name the copy {}: {e}", dest.display()))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(target: &str, path: &str) -> Option<Remote> {
        Some(Remote { target: target.into(), path: path.into() })
    }

    #[test]
    fn remote_sides_are_told_from_local_paths_as_scp_does() {
        assert_eq!(parse_remote("files.example.org:artifacts/"), r("files.example.org", "artifacts/"));
        assert_eq!(parse_remote("h:5002:backups/x"), r("h:5002", "backups/x"));
        assert_eq!(parse_remote("h:"), r("h", ""));
        assert_eq!(parse_remote("h:123"), r("h", "123"), "a number alone is a path, as in scp");
        assert_eq!(parse_remote("[::1]:5002:a"), r("[::1]:5002", "a"));
        assert_eq!(parse_remote("[fe80::1]:a"), r("[fe80::1]", "a"));
        for local in ["dist/", "./a:b", "/tmp/x:y", "dir/a:b", "build.log", ":x", ".", "-"] {
            assert_eq!(parse_remote(local), None, "{local}");
        }
    }
}

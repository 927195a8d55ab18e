//! `push` and `pull` as the command line runs them (also for `cp`): local
//! checks first, then one client session with retries.

use std::path::{Path, PathBuf};

use super::ClientArgs;
use super::session::{Limits, remote_path, with_client, with_client_limited};
use crate::client::PushPlan;
use crate::error::Error;
use crate::progress::{Op, Output};
use crate::walk::Filter;

/// `xfer push HOST PATHS --to TO`: standard input when PATHS is `-`.
pub(super) async fn push(
    host: &str,
    paths: &[PathBuf],
    to_text: &str,
    filter: Option<Filter>,
    retry: u32,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    check_host(host, "push")?;
    if paths.is_empty() {
        return Err(Error::Usage("push needs what to send: `xfer push HOST PATH... [--to REMOTE_DIR]`".into()).into());
    }
    for p in paths.iter().filter(|p| p.as_os_str() != "-" && !p.exists()) {
        if let Some(r) = p.to_str().and_then(super::cp::parse_remote) {
            return Err(Error::Usage(format!(
                "cannot push {}: no such file here, and it looks like HOST:PATH; push takes the server first \
                 and the remote folder with --to (`xfer push {} FILES... --to {}`), or copy scp style with \
                 `xfer cp FILES... {}`",
                p.display(),
                r.target,
                if r.path.is_empty() { "DIR" } else { &r.path },
                p.display()
            ))
            .into());
        }
    }
    let to = remote_path(to_text)?;
    // Local mistakes are reported before anything touches the network.
    match paths {
        [only] if only.as_os_str() == "-" => {
            if client.dry_run {
                return Err(Error::Usage(
                    "--dry-run cannot tell what standard input would send: it sends nothing from it".into(),
                )
                .into());
            }
            // `--to backups/` names a folder: a stream needs a file.
            if to_text.ends_with('/') && !to.is_root() {
                return Err(Error::Usage(format!(
                    "--to {to_text} ends with '/', so it names a folder, but standard input is one file: \
                     name the file to write, e.g. --to {to_text}stdin.bin"
                ))
                .into());
            }
            // Standard input cannot be read twice: no retries.
            let mut plan = Some(PushPlan::stdin(to)?);
            with_client(host, client, Op::Push, output, 0, |c, rep| {
                let plan = plan.take();
                Box::pin(async move { c.push(plan.expect("one attempt"), rep).await })
            })
            .await
        }
        paths if paths.iter().any(|p| p.as_os_str() == "-") => {
            Err(Error::Usage("'-' (standard input) must be the only source".into()).into())
        }
        paths => {
            // A sync's entries are the contents of one folder; else each
            // source is named on its own (and followed if it is a link).
            let plan = || match client.sync_tree {
                true => PushPlan::contents(paths, &to, filter.clone(), client.contents_named_as.as_deref()),
                false => PushPlan::filtered(paths, &to, filter.clone()),
            };
            plan()?;
            let dry_run = client.dry_run;
            with_client(host, client, Op::Push, output, retry, |c, rep| {
                let plan = plan();
                Box::pin(
                    async move { if dry_run { c.push_dry_run(plan?, rep).await } else { c.push(plan?, rep).await } },
                )
            })
            .await
        }
    }
}

/// One local file sent as the remote file `target` (`xfer cp a b:c`).
pub(super) async fn push_as(
    host: &str,
    source: &Path,
    target: &str,
    retry: u32,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let target = remote_path(target)?;
    PushPlan::file_as(source, target.clone())?;
    let dry_run = client.dry_run;
    with_client(host, client, Op::Push, output, retry, |c, rep| {
        let plan = PushPlan::file_as(source, target.clone());
        Box::pin(async move { if dry_run { c.push_dry_run(plan?, rep).await } else { c.push(plan?, rep).await } })
    })
    .await
}

/// `xfer pull HOST REMOTES --out OUT`: to standard output when the last
/// of REMOTES is `-`.
pub(super) async fn pull(
    host: &str,
    remotes: &[String],
    out: &Path,
    limits: Limits,
    retry: u32,
    client: &ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    check_host(host, "pull")?;
    if let Some(f) = limits.filter.as_ref().filter(|f| f.text().len() > crate::protocol::frame::MAX_TEXT_LEN) {
        return Err(Error::Usage(format!(
            "the --exclude/--include patterns take {} bytes; a server takes at most {} for a pull",
            f.text().len(),
            crate::protocol::frame::MAX_TEXT_LEN
        ))
        .into());
    }
    if remotes.is_empty() {
        return Err(Error::Usage("pull needs what to fetch: `xfer pull HOST REMOTE... [--out DIR]`".into()).into());
    }
    if remotes.last().is_some_and(|r| r == "-") {
        let [remote, _] = remotes else {
            return Err(Error::Usage("with '-' (standard output), pull exactly one remote file".into()).into());
        };
        if remote_path(remote)?.is_root() {
            return Err(
                Error::Usage("the root is a folder: only a file can be written to standard output".into()).into()
            );
        }
        if client.json {
            return Err(Error::Usage("--json cannot share standard output with the file".into()).into());
        }
        if client.dry_run {
            return Err(Error::Usage("--dry-run with standard output: pull it with --out DIR -n instead".into()).into());
        }
        let remote = remote_path(remote)?;
        // Only errors on stderr: the data owns stdout. Bytes written
        // there cannot be taken back, so no retries.
        return with_client(host, client, Op::Pull, Output::Quiet, 0, |c, rep| {
            let remote = remote.clone();
            Box::pin(async move { c.pull_to(&remote, tokio::io::stdout(), rep).await })
        })
        .await;
    }
    let remotes = remotes.iter().map(|r| remote_path(r)).collect::<Result<Vec<_>, _>>()?;
    let out = out.to_owned();
    let dry_run = client.dry_run;
    with_client_limited(host, client, Op::Pull, output, retry, limits, |c, rep| {
        let (remotes, out) = (remotes.clone(), out.clone());
        Box::pin(async move {
            if dry_run { c.pull_dry_run(&remotes, &out, rep).await } else { c.pull(&remotes, &out, rep).await }
        })
    })
    .await
}

/// A server written with a path (`host:dir`, `host:5002:dir`) where the
/// command wants HOST or HOST:PORT: said plainly, with both ways to write
/// what was meant.
fn check_host(host: &str, op: &str) -> Result<(), Error> {
    let Some(r) = super::cp::parse_remote(host) else { return Ok(()) };
    if r.path.is_empty() || r.path.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(()); // HOST:PORT
    }
    let example = match op {
        "push" => format!("`xfer push {} FILES... --to {}` or `xfer cp FILES... {host}`", r.target, r.path),
        _ => format!("`xfer pull {} {} --out DIR` or `xfer cp {host} DIR/`", r.target, r.path),
    };
    Err(Error::Usage(format!("'{host}' is a server and a path, but {op} takes the server alone: {example}")))
}

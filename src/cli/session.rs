//! One client session as the command line runs it: connect, run one
//! operation, retry with backoff on transient failures, and always end
//! with the summary.

use std::io::IsTerminal;
use std::time::Duration;

use super::config::resolve_host;
use super::{ClientArgs, shutdown_signal};
use crate::client::{Client, ClientConfig};
use crate::connection::Timeouts;
use crate::error::Error;
use crate::progress::{Op, Output, Reporter};
use crate::protocol::WirePath;

/// How output goes for `args`: JSON lines, quiet, or for people.
pub(super) fn output(args: &ClientArgs, quiet: bool, verbose: u8) -> Output {
    match (args.json, quiet) {
        (true, _) => Output::Json,
        (false, true) => Output::Quiet,
        (false, false) if verbose > 0 => Output::Verbose,
        (false, false) => Output::Human,
    }
}

/// A remote path as typed: cleaned, but never allowed out of the root.
pub(super) fn remote_path(s: &str) -> Result<WirePath, Error> {
    WirePath::from_user(s).map_err(|error| Error::BadPath { path: s.to_owned(), error })
}

pub(super) type OpFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + 'a>>;

/// What a client accepts from the server, for commands that receive.
#[derive(Debug, Clone, Default)]
pub(super) struct Limits {
    pub max_size: Option<u64>,
    /// What the server is to leave out of what it sends (`--exclude`).
    pub filter: Option<crate::walk::Filter>,
}

/// [`with_client_limited`] with no limits beyond the defaults.
pub(super) async fn with_client<F>(
    host: &str,
    args: &ClientArgs,
    op: Op,
    output: Output,
    retries: u32,
    f: F,
) -> anyhow::Result<()>
where
    F: for<'a> FnMut(&'a mut Client, &'a mut Reporter) -> OpFuture<'a>,
{
    with_client_limited(host, args, op, output, retries, Limits::default(), f).await
}

/// Connects, runs one operation, closes, and always prints the summary.
/// A transient failure (refused, cut or stalled connection, server
/// restarting) is retried `retries` times with backoff; each attempt
/// resumes where the last left off, and files already reported are not
/// reported again.
pub(super) async fn with_client_limited<F>(
    host: &str,
    args: &ClientArgs,
    op: Op,
    output: Output,
    retries: u32,
    limits: Limits,
    mut f: F,
) -> anyhow::Result<()>
where
    F: for<'a> FnMut(&'a mut Client, &'a mut Reporter) -> OpFuture<'a>,
{
    let target = resolve_host(host)?;
    let alias = target.alias.as_ref();
    let mut cfg = ClientConfig::new(&target.address, args.identity.paths("client", alias)?)?;
    cfg.server_name = args.server_name.clone().or_else(|| alias.and_then(|a| a.server_name.clone()));
    cfg.max_size = limits.max_size;
    cfg.filter = limits.filter;
    cfg.bwlimit = args.bwlimit;
    cfg.links = args.links;
    cfg.sync_tree = args.sync_tree;
    cfg.timeouts = Timeouts { idle: args.idle_timeout, ..Timeouts::default() };
    // Bars for people watching a terminal (or asked for), while bytes move.
    let shown = !args.no_progress && (args.progress || std::io::stderr().is_terminal());
    let bars = matches!(op, Op::Push | Op::Pull) && shown && !args.dry_run;
    let mut rep = if bars { Reporter::with_bars(output, op, args.progress) } else { Reporter::new(output, op) };
    rep.set_dry_run(args.dry_run);
    let attempts = retries.saturating_add(1);
    let mut attempt = 1;
    let result = loop {
        // On Ctrl-C the operation is dropped, which deletes any ordinary
        // staged file; partial copies of large files stay for a resume.
        let result = tokio::select! {
            r = attempt_once(&cfg, &mut rep, &mut f) => r,
            _ = shutdown_signal() => Err(Error::Interrupted),
        };
        match result {
            Err(e) if e.is_transient() && attempt < attempts => {
                let delay = backoff(attempt);
                rep.retrying(&e, attempt, attempts, delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown_signal() => break Err(Error::Interrupted),
                }
                attempt += 1;
            }
            other => break other,
        }
    };
    let summary = rep.finish_after(result.as_ref().err());
    result?;
    summary?;
    Ok(())
}

/// One attempt: connect, run, close cleanly.
async fn attempt_once<F>(cfg: &ClientConfig, rep: &mut Reporter, f: &mut F) -> Result<(), Error>
where
    F: for<'a> FnMut(&'a mut Client, &'a mut Reporter) -> OpFuture<'a>,
{
    let mut client = Client::connect(cfg.clone()).await?;
    f(&mut client, rep).await?;
    client.close().await
}

/// Wait before attempt `n + 1`: 0.5 s, 1 s, 2 s … up to 10 s, with some
/// jitter so clients cut off together do not return together.
fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << n.saturating_sub(1).min(5)).min(Duration::from_secs(10));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    base + base.mul_f64(f64::from(nanos % 250) / 1000.0)
}

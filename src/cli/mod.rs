//! The command line: clap definitions, and their translation into the plain
//! configs the library takes ([`ServeConfig`], [`ClientConfig`],
//! [`KeygenConfig`]). This is the only module that knows clap, and with
//! `main.rs` the only one that prints outside [`crate::progress`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::io::IsTerminal;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::client::{Client, ClientConfig, PushPlan};
use crate::connection::Timeouts;
use crate::error::Error;
use crate::progress::{Op, Output, Reporter};
use crate::protocol::WirePath;
use crate::server::{self, Reloader, ServeConfig, Server};
use crate::tls::{Crl, IdentityPaths, Pem};

/// Move files between machines over mutual TLS 1.3, every byte verified
/// with BLAKE3.
#[derive(Debug, Parser)]
#[command(name = "xfer", version = VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `--version` prints: the release and the wire protocol it speaks.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 2)");

mod enroll;
mod keygen;

pub use enroll::{EnrollArgs, RenewArgs};
pub use keygen::{KeyTypeArg, KeygenArgs};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a CA (if missing) and peer certificates signed by it.
    Keygen(KeygenArgs),
    /// Receive and serve files under a root folder.
    Serve(ServeArgs),
    /// Join with a one-time invite code: get a certificate, the key staying here.
    Enroll(EnrollArgs),
    /// Get a new certificate (and key) for the current one before it expires.
    Renew(RenewArgs),
    /// Send files and folders to a server.
    Push(PushArgs),
    /// Fetch files and folders from a server.
    Pull(PullArgs),
    /// List a folder on a server.
    Ls(LsArgs),
    /// Remove files (and folders, with -r) on a server.
    Rm(RmArgs),
    /// Print BLAKE3 hashes of local files, as `b3sum` does.
    Hash(HashArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the manual page (roff), e.g. `xfer man > xfer.1`.
    Man,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Files to hash; `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Who this peer is and which CA it trusts.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Folder holding ca.pem, NAME.pem and NAME.key.
    #[arg(long, env = "XFER_CERTS", default_value = "certs", value_name = "DIR")]
    pub certs: PathBuf,
    /// Which identity in --certs to use [default: server for serve, client otherwise].
    #[arg(long, env = "XFER_NAME")]
    pub name: Option<String>,
    /// Certificate file (overrides --certs/--name); $XFER_CERT may hold the PEM text itself.
    #[arg(long, env = "XFER_CERT", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub cert: Option<PathBuf>,
    /// Private key file (overrides --certs/--name); $XFER_KEY may hold the PEM text itself.
    #[arg(long, env = "XFER_KEY", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub key: Option<PathBuf>,
    /// CA certificate file (overrides --certs); $XFER_CA may hold the PEM text itself.
    #[arg(long, env = "XFER_CA", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub ca: Option<PathBuf>,
    /// Revocation list to refuse revoked peers [default: DIR/ca.crl when it exists].
    #[arg(long, env = "XFER_CRL", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub crl: Option<PathBuf>,
    /// Refuse a private key file that other users can read (default: warn).
    #[arg(long)]
    pub strict: bool,
}

impl IdentityArgs {
    pub(crate) fn paths(&self, default_name: &str) -> Result<IdentityPaths, Error> {
        let base = IdentityPaths::in_dir(&self.certs, self.name.as_deref().unwrap_or(default_name));
        Ok(IdentityPaths {
            cert: pem_arg(self.cert.as_ref(), "XFER_CERT", base.cert)?,
            key: pem_arg(self.key.as_ref(), "XFER_KEY", base.key)?,
            ca: pem_arg(self.ca.as_ref(), "XFER_CA", base.ca)?,
            crl: match (&self.crl, &self.ca) {
                (Some(path), _) => Some(Crl { path: path.clone(), required: true }),
                // Beside the CA actually in use, when it is a file.
                (None, Some(ca)) if !ca.to_string_lossy().trim_start().starts_with("-----BEGIN") => {
                    Some(Crl { path: ca.with_file_name("ca.crl"), required: false })
                }
                (None, _) => base.crl,
            },
            strict: self.strict,
        })
    }
}

/// Paths as typed, the empty one included (so an empty `$XFER_KEY` is
/// reported by [`pem_arg`] in words, not as a clap error).
fn any_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// A file path, or, when the value is PEM text, that text; but PEM text is
/// accepted only from the environment variable `var`: on the command line
/// every user of the machine could read it (`ps`). A value that may be a
/// secret is never repeated in a message, however malformed it is.
fn pem_arg(value: Option<&PathBuf>, var: &'static str, default: Pem) -> Result<Pem, Error> {
    let Some(value) = value else { return Ok(default) };
    let text = value.to_string_lossy();
    let from_env = std::env::var_os(var).is_some_and(|env| env == value.as_os_str());
    let flag = var.trim_start_matches("XFER_").to_ascii_lowercase();
    if text.trim().is_empty() {
        return Err(Error::Usage(if from_env {
            format!(
                "{var} is set but empty (CI systems give secrets no value in jobs that may not see them, such as \
                 pull requests from forks): set it to the PEM text or a file's path, or unset it"
            )
        } else {
            format!("--{flag} is empty: give a file's path")
        }));
    }
    // Anything with PEM armour, several lines or the length of a key is
    // text, not a file name (a file name is printed in errors; a key must
    // never be).
    // From the environment, a value naming no file is taken as (broken)
    // text too: it may be a key without its armour.
    let looks_like_text = text.contains("-----")
        || text.contains('\n')
        || text.len() > 1024
        || (from_env && std::fs::symlink_metadata(value).is_err());
    match (looks_like_text, from_env) {
        (false, _) => Ok(Pem::File(value.clone())),
        (true, true) => Ok(Pem::Env { var, text: text.into_owned() }),
        (true, false) => Err(Error::Usage(format!(
            "--{flag} holds PEM text, which on the command line is readable by every user of this machine: \
             pass it in ${var} instead"
        ))),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:5001")]
    pub listen: SocketAddr,
    /// Folder to receive into and serve from (created if missing).
    #[arg(long, default_value = "received")]
    pub root: PathBuf,
    /// Admit only clients whose certificate has this name (CN or DNS SAN); repeatable.
    #[arg(long, value_name = "NAME")]
    pub allow: Vec<String>,
    /// Refuse push and rm.
    #[arg(long)]
    pub read_only: bool,
    /// Grant read/write/delete per peer name and path prefix (TOML; see README).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Largest file accepted: bytes, or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Most connections served at once.
    #[arg(long, default_value_t = server::MAX_CONNS)]
    pub max_conns: usize,
    /// Most connections served at once for one client identity.
    #[arg(long, default_value_t = server::MAX_CONNS_PER_PEER)]
    pub max_conns_per_peer: usize,
    /// Memory the server may use, over all connections, to buffer peers'
    /// small files, offers and read-ahead (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub max_memory: u64,
    /// Time in-flight transfers get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Deadline for the TLS handshake.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Deadline from the handshake to the client's first request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest a transfer may stall (per read or write).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Delete partial copies of interrupted uploads not resumed for this long.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub partial_ttl: Duration,
    /// Bytes of partial copies one client may leave; its oldest go first.
    #[arg(long, value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub partial_quota: u64,
    /// Sign certificates for invites (`xfer keygen --invite`) and renewals
    /// (`xfer renew`): needs ca.key and invites.json beside ca.pem.
    #[arg(long)]
    pub enroll: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Options shared by the commands that talk to a server.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The name the server's certificate must carry, if not HOST.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// JSON Lines on stdout: one object per file, then a summary.
    #[arg(long)]
    pub json: bool,
    /// Longest a transfer may stall (per read or write).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Server, as HOST or HOST:PORT (default port 5001).
    pub host: String,
    /// Files and folders to send; `-` sends standard input as the file --to names.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Remote folder to place them in (default: the root); with `-`, the remote file.
    #[arg(long, value_name = "REMOTE_DIR", default_value = "")]
    pub to: String,
    /// On a refused, cut or stalled connection, reconnect and resume up to N
    /// times, with backoff (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retry: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Server, as HOST or HOST:PORT (default port 5001).
    pub host: String,
    /// Remote files and folders, relative to the server's root; `REMOTE -`
    /// writes one file to standard output.
    #[arg(required = true)]
    pub remotes: Vec<String>,
    /// Local folder to place them in (created if missing).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Largest file accepted: bytes, or with a K, M, G or T suffix. Whatever
    /// this says, a pull never fills the disk past a reserve of 5% of it
    /// (at most 1 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// On a refused, cut or stalled connection, reconnect and resume up to N
    /// times, with backoff (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retry: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Server, as HOST or HOST:PORT (default port 5001).
    pub host: String,
    /// Remote folder (default: the root).
    #[arg(default_value = "")]
    pub remote: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Server, as HOST or HOST:PORT (default port 5001).
    pub host: String,
    /// Remote files (and folders, with -r) to remove.
    #[arg(required = true)]
    pub remotes: Vec<String>,
    /// Remove folders and everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration '{s}': use e.g. 500ms, 10s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in '{s}': use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration '{s}': {e}"))
}

/// Parses `4096`, `64K`, `10M`, `2G`, `1T` (powers of 1024; `KiB`, `MB`
/// and the like are read the same way).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}': use e.g. 4096, 64K, 10M, 2G"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size unit in '{s}': use K, M, G or T")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size '{s}' is too large"))
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(a) => keygen::keygen(a),
        Command::Enroll(a) => enroll::enroll(a).await,
        Command::Renew(a) => enroll::renew(a).await,
        Command::Hash(a) => hash(&a.files),
        Command::Completions(a) => {
            let mut out = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "xfer", &mut out);
            print_all(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            print_all(&out)
        }
        Command::Serve(a) => serve(a).await,
        Command::Push(a) => {
            let to = remote_path(&a.to)?;
            // Local mistakes are reported before anything touches the network.
            let output = output(&a.client, cli.quiet);
            match &a.paths[..] {
                [only] if only.as_os_str() == "-" => {
                    // Standard input cannot be read twice: no retries.
                    let mut plan = Some(PushPlan::stdin(to)?);
                    with_client(&a.host, &a.client, Op::Push, output, 0, |c, rep| {
                        let plan = plan.take();
                        Box::pin(async move { c.push(plan.expect("one attempt"), rep).await })
                    })
                    .await
                }
                paths if paths.iter().any(|p| p.as_os_str() == "-") => {
                    Err(Error::Usage("'-' (standard input) must be the only source".into()).into())
                }
                paths => {
                    PushPlan::new(paths, &to)?;
                    with_client(&a.host, &a.client, Op::Push, output, a.retry, |c, rep| {
                        let plan = PushPlan::new(paths, &to);
                        Box::pin(async move { c.push(plan?, rep).await })
                    })
                    .await
                }
            }
        }
        Command::Pull(a) if a.remotes.last().is_some_and(|r| r == "-") => {
            let [remote, _] = &a.remotes[..] else {
                return Err(Error::Usage("with '-' (standard output), pull exactly one remote file".into()).into());
            };
            if remote_path(remote)?.is_root() {
                return Err(
                    Error::Usage("the root is a folder: only a file can be written to standard output".into()).into()
                );
            }
            if a.client.json {
                return Err(Error::Usage("--json cannot share standard output with the file".into()).into());
            }
            let remote = remote_path(remote)?;
            // Only errors on stderr: the data owns stdout. Bytes written
            // there cannot be taken back, so no retries.
            with_client(&a.host, &a.client, Op::Pull, Output::Quiet, 0, |c, rep| {
                let remote = remote.clone();
                Box::pin(async move { c.pull_to(&remote, tokio::io::stdout(), rep).await })
            })
            .await
        }
        Command::Pull(a) => {
            let remotes = a.remotes.iter().map(|r| remote_path(r)).collect::<Result<Vec<_>, _>>()?;
            let output = output(&a.client, cli.quiet);
            let out = a.out.clone();
            let limits = Limits { max_size: a.max_size };
            with_client_limited(&a.host, &a.client, Op::Pull, output, a.retry, limits, |c, rep| {
                let (remotes, out) = (remotes.clone(), out.clone());
                Box::pin(async move { c.pull(&remotes, &out, rep).await })
            })
            .await
        }
        Command::Ls(a) => {
            let path = remote_path(&a.remote)?;
            let output = if a.client.json { Output::Json } else { Output::Human };
            with_client(&a.host, &a.client, Op::List, output, 0, |c, rep| {
                let path = path.clone();
                Box::pin(async move { c.list(&path, rep).await })
            })
            .await
        }
        Command::Rm(a) => {
            let remotes = a.remotes.iter().map(|r| remote_path(r)).collect::<Result<Vec<_>, _>>()?;
            let output = output(&a.client, cli.quiet);
            let recursive = a.recursive;
            with_client(&a.host, &a.client, Op::Remove, output, 0, |c, rep| {
                let remotes = remotes.clone();
                Box::pin(async move { c.remove(&remotes, recursive, rep).await })
            })
            .await
        }
    }
}

fn output(args: &ClientArgs, quiet: bool) -> Output {
    match (args.json, quiet) {
        (true, _) => Output::Json,
        (false, true) => Output::Quiet,
        (false, false) => Output::Human,
    }
}

/// A remote path as typed: cleaned, but never allowed out of the root.
fn remote_path(s: &str) -> Result<WirePath, Error> {
    WirePath::from_user(s).map_err(|error| Error::BadPath { path: s.to_owned(), error })
}

type OpFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + 'a>>;

/// What a client accepts from the server, for commands that receive.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    max_size: Option<u64>,
}

/// [`with_client_limited`] with no limits beyond the defaults.
async fn with_client<F>(host: &str, args: &ClientArgs, op: Op, output: Output, retries: u32, f: F) -> anyhow::Result<()>
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
async fn with_client_limited<F>(
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
    let mut cfg = ClientConfig::new(host, args.identity.paths("client")?)?;
    cfg.server_name = args.server_name.clone();
    cfg.max_size = limits.max_size;
    cfg.timeouts = Timeouts { idle: args.idle_timeout, ..Timeouts::default() };
    // Bars only for people watching a terminal, and only while bytes move.
    let bars = matches!(op, Op::Push | Op::Pull) && std::io::stderr().is_terminal();
    let mut rep = if bars { Reporter::with_bars(output, op) } else { Reporter::new(output, op) };
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
    let summary = rep.finish();
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

/// Writes generated text to stdout; a reader that stops early
/// (`xfer man | head`) is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `xfer hash`: the same lines as `b3sum`, so a user can check a file by
/// hand against what xfer reported. Every file is tried; any failure fails.
fn hash(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = 0;
    for f in files {
        let mut hasher = blake3::Hasher::new();
        let read = if f.as_os_str() == "-" {
            hasher.update_reader(std::io::stdin().lock()).map(drop)
        } else {
            std::fs::File::open(f).and_then(|file| hasher.update_reader(file).map(drop))
        };
        match read {
            Ok(()) => println!("{}  {}", hasher.finalize().to_hex(), f.display()),
            Err(e) => {
                eprintln!("xfer: {}: {e}", f.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be read", files.len());
    }
    Ok(())
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = ServeConfig::new(a.listen, a.root.clone(), a.identity.paths("server")?);
    cfg.allow = a.allow;
    cfg.read_only = a.read_only;
    cfg.policy = a.policy;
    cfg.max_size = a.max_size;
    cfg.max_conns = a.max_conns;
    cfg.max_conns_per_peer = a.max_conns_per_peer;
    cfg.max_memory = usize::try_from(a.max_memory).unwrap_or(usize::MAX);
    cfg.grace = a.grace;
    cfg.partial_ttl = a.partial_ttl;
    cfg.partial_quota = a.partial_quota;
    cfg.enroll = a.enroll;
    let cfg_enroll = a.enroll;
    cfg.timeouts = Timeouts {
        handshake: a.handshake_timeout,
        header: a.header_timeout,
        idle: a.idle_timeout,
        ..Timeouts::default()
    };
    let allow = cfg.allow.clone();
    let read_only = cfg.read_only;
    let server = Server::bind(cfg).await.with_context(|| "cannot start the server".to_owned())?;
    let addr = server.local_addr()?;
    spawn_reload_on_sighup(server.reloader());
    // Scripts wait for this exact line to learn the port, whatever the log
    // level, so it does not go through the logger.
    eprintln!("xfer: listening on {addr}");
    tracing::info!(
        root = %server.root().display(),
        read_only,
        enroll = cfg_enroll,
        allow = %if allow.is_empty() { "any certificate from the CA".to_owned() } else { allow.join(",") },
        "serving"
    );
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// Reloads certificates, key, CA and policy on each SIGHUP; a broken new
/// file is refused with a log line and the running configuration stays.
fn spawn_reload_on_sighup(reloader: Reloader) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("SIGHUP reload unavailable: cannot install the signal handler");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload() {
                Ok(()) => tracing::info!("reloaded certificates and policy (SIGHUP)"),
                Err(e) => tracing::warn!("reload refused, the previous configuration stays: {e}"),
            }
        }
    });
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await, // no signal support: never fire
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        assert!(VERSION.ends_with(&format!("(protocol {})", crate::protocol::VERSION)));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}

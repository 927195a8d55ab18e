//! The command line: clap definitions, and their translation into the plain
//! configs the library takes ([`ServeConfig`], [`ClientConfig`],
//! [`KeygenConfig`]). This is the only module that knows clap, and with
//! `main.rs` the only one that prints outside [`crate::progress`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::Error;
use crate::progress::{Op, Output};

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
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 3)");

mod config;
mod cp;
mod enroll;
mod hash;
mod identity;
mod keygen;
mod serve;
mod session;
mod sync;
mod transfer;

pub use enroll::{EnrollArgs, RenewArgs};
pub use hash::HashArgs;
pub use identity::IdentityArgs;
pub use keygen::{KeyTypeArg, KeygenArgs};
pub use serve::{ServeArgs, shutdown_signal};
use session::{output, remote_path, with_client};

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
    /// Copy scp style: `xfer cp dist/ HOST:artifacts/`, `xfer cp HOST:a/b.tar.gz .`
    Cp(cp::CpArgs),
    /// Make a folder match another, rsync style: `xfer sync dist HOST:dist [--delete]`
    Sync(sync::SyncArgs),
    /// List a folder on a server.
    Ls(LsArgs),
    /// Remove files (and folders, with -r) on a server.
    Rm(RmArgs),
    /// Print BLAKE3 hashes of local files, as `b3sum` does.
    Hash(HashArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the manual page (roff), e.g. `xfer man > xfer.1`; with --dir,
    /// write a page per command there.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
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
    /// Show what would be sent, received or removed, changing nothing on
    /// either side (push, pull, cp, rm).
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Most bytes a second each way: 10M (10 MiB/s), 500K, or a bare
    /// number of KiB/s as rsync reads it.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Send symbolic links as links, and make those a pull receives, when
    /// their target stays inside the tree sent (relative, not climbing out
    /// of it); others are skipped with the reason. Without it, links are
    /// skipped (push, pull, cp, sync).
    #[arg(long)]
    pub links: bool,
    /// Set by sync: the sources are one folder's entries, and links may
    /// lead anywhere inside the folder synced, not only inside one entry.
    #[arg(skip)]
    pub sync_tree: bool,
    /// Set by cp sending a folder's contents as a new folder: patterns
    /// match names as the user named the folder.
    #[arg(skip)]
    pub contents_named_as: Option<String>,
    /// Draw progress bars even when stderr is not a terminal (CI systems
    /// that render them); without it, bars show only on a terminal.
    #[arg(long, conflicts_with = "no_progress")]
    pub progress: bool,
    /// Never draw progress bars.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Server, as HOST or HOST:PORT (default port 5001).
    pub host: String,
    /// Files and folders to send; `-` sends standard input as the file --to names.
    // Checked in `push`, after a HOST:PATH in HOST's place is explained.
    #[arg(value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
    /// Remote folder to place them in (default: the root); with `-`, the remote file.
    #[arg(long, value_name = "REMOTE_DIR", default_value = "")]
    pub to: String,
    /// On a refused, cut or stalled connection, reconnect and resume up to N
    /// times, with backoff (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retry: u32,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub habits: Habits,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How a command that receives from a server (pull, cp, sync) bounds what
/// it takes and retries.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Largest file accepted from a server: bytes, or with a K, M, G or T
    /// suffix. Whatever this says, a pull never fills the disk past a
    /// reserve of 5% of it (at most 1 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// On a refused, cut or stalled connection, reconnect and resume up to N
    /// times, with backoff (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retry: u32,
}

impl TransferArgs {
    fn limits(&self, filter: Option<crate::walk::Filter>) -> session::Limits {
        session::Limits { max_size: self.max_size, filter }
    }
}

/// What a transfer leaves out, on the sending side.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Leave out paths matching PATTERN (gitignore syntax: `*.map`,
    /// `node_modules/`, `/dist/tmp`); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Send paths matching PATTERN even if an --exclude matches them
    /// (gitignore's `!PATTERN`); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Read --exclude patterns from FILE, one per line, as in a .gitignore.
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
}

impl FilterArgs {
    fn build(&self) -> Result<Option<crate::walk::Filter>, Error> {
        crate::walk::Filter::new(&self.exclude, &self.include, &self.exclude_from).map_err(Error::Usage)
    }
}

/// Flags scp and rsync users type out of habit, accepted where what they
/// ask for is what xfer always does (hidden from --help).
#[derive(Debug, Args)]
pub struct Habits {
    /// Recursive: folders are always copied whole.
    #[arg(short = 'r', short_alias = 'R', action = clap::ArgAction::Count, hide = true)]
    pub recursive: u8,
    /// Preserve times and modes: mtime and the executable bit always are.
    #[arg(short = 'p', action = clap::ArgAction::Count, hide = true)]
    pub preserve: u8,
    /// Archive mode: what xfer keeps, it always keeps.
    #[arg(short = 'a', action = clap::ArgAction::Count, hide = true)]
    pub archive: u8,
    /// Compress: xfer does not (see [`Habits::note`]).
    #[arg(short = 'z', action = clap::ArgAction::Count, hide = true)]
    pub compress: u8,
}

impl Habits {
    /// The one of these flags that does not mean what it says here.
    fn note(&self) {
        if self.compress > 0 {
            eprintln!(
                "xfer: -z ignored: xfer does not compress. Build artifacts are mostly compressed already, \
                 compressing costs more CPU than it saves on fast links, and compression inside an encrypted \
                 channel can leak secrets (CRIME, BREACH); compress beforehand (tar --zstd) where it pays"
            );
        }
    }
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Server, as HOST or HOST:PORT (default port 5001).
    pub host: String,
    /// Remote files and folders, relative to the server's root; `REMOTE -`
    /// writes one file to standard output.
    // Checked in `pull`, after a HOST:PATH in HOST's place is explained.
    #[arg(value_name = "REMOTES")]
    pub remotes: Vec<String>,
    /// Local folder to place them in (created if missing).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// What the server leaves out (gitignore patterns, matched as for a
    /// push: `dist/app.js` for `pull HOST x/dist`).
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub habits: Habits,
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
    #[arg(short, long, short_alias = 'R')]
    pub recursive: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses a duration as humantime reads it (`500ms`, `10s`, `2m`,
/// `1h30m`, `2days`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|e| format!("invalid duration '{s}': {e}"));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration '{s}': {e} (use e.g. 500ms, 10s, 2m, 1h30m)"))
}

/// Parses `4096`, `64K`, `10M`, `1.5G`, `1T` (powers of 1024, as are
/// `KiB`, `MB` and the like) with parse-size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("invalid size '{s}': {e} (use e.g. 4096, 64K, 10M, 2G)"))
}

/// Parses a `--bwlimit`: like a size, but a bare number is KiB/s (as
/// rsync reads it), and anything under 1 KiB/s is refused: it could not
/// keep a connection within its idle timeout.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let rate = parse_size::Config::new()
        .with_binary()
        .with_default_factor(1024)
        .parse_size(s.trim())
        .map_err(|e| format!("invalid rate '{s}': {e} (use e.g. 10M for 10 MiB/s, or 500 for 500 KiB/s)"))?;
    if rate < 1024 {
        return Err(format!("--bwlimit {s} is below the least xfer takes, 1K (1 KiB/s)"));
    }
    Ok(rate)
}

/// Runs the parsed command; a client command with `--json` ends with a
/// summary line even when it fails before reaching the server.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let json_op = match &cli.command {
        Command::Push(a) if a.client.json => Some("push"),
        Command::Pull(a) if a.client.json => Some("pull"),
        Command::Cp(a) if a.client.json => Some("cp"),
        Command::Sync(a) if a.client.json => Some("sync"),
        Command::Ls(a) if a.client.json => Some("list"),
        Command::Rm(a) if a.client.json => Some("remove"),
        _ => None,
    };
    let result = run_command(cli).await;
    if let (Some(op), Err(e)) = (json_op, &result) {
        let class = e.downcast_ref::<Error>().map_or(crate::error::Class::Other, Error::class);
        crate::progress::json_failure(op, class, &format!("{e:#}"));
    }
    result
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(a) => keygen::keygen(a),
        Command::Enroll(a) => enroll::enroll(a).await,
        Command::Renew(a) => enroll::renew(a).await,
        Command::Hash(a) => hash::run(&a),
        Command::Completions(a) => {
            let mut out = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "xfer", &mut out);
            print_all(&out)
        }
        Command::Man(a) => man(a.dir.as_deref()),
        Command::Serve(a) => serve::serve(a, cli.log_format).await,
        Command::Push(a) => {
            a.habits.note();
            let output = output(&a.client, cli.quiet, cli.verbose);
            let filter = a.filter.build()?;
            transfer::push(&a.host, &a.paths, &a.to, filter, a.retry, &a.client, output).await
        }
        Command::Pull(a) => {
            a.habits.note();
            let output = output(&a.client, cli.quiet, cli.verbose);
            let limits = a.transfer.limits(a.filter.build()?);
            transfer::pull(&a.host, &a.remotes, &a.out, limits, a.transfer.retry, &a.client, output).await
        }
        Command::Cp(mut a) => {
            a.habits.note();
            let output = output(&a.client, cli.quiet, cli.verbose);
            cp::cp(&mut a, output).await
        }
        Command::Sync(mut a) => {
            a.habits.note();
            // The tree synced is the whole folder: its links may lead
            // anywhere in it.
            a.client.sync_tree = true;
            let output = output(&a.client, cli.quiet, cli.verbose);
            sync::sync(&a, output).await
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
            let output = output(&a.client, cli.quiet, cli.verbose);
            let recursive = a.recursive;
            let dry_run = a.client.dry_run;
            with_client(&a.host, &a.client, Op::Remove, output, 0, |c, rep| {
                let remotes = remotes.clone();
                Box::pin(async move {
                    if dry_run {
                        c.remove_dry_run(&remotes, recursive, rep).await
                    } else {
                        c.remove(&remotes, recursive, rep).await
                    }
                })
            })
            .await
        }
    }
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write xfer.1 and one page per command (xfer-push.1, …) to DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `xfer man`: the top page on stdout, or every page into a folder.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write;
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return print_all(&out);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = cmd;
    // Building names each subcommand `xfer-NAME`, the pages' titles.
    cmd.build();
    let mut pages = vec![("xfer".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        pages.push((format!("xfer-{}", sub.get_name()), sub.clone()));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        // A closed stdout (`| head`) stops the report, not the pages.
        let _ = writeln!(std::io::stdout(), "wrote {}", path.display());
    }
    Ok(())
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
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn rates_parse_with_bare_numbers_in_kib() {
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("500").unwrap(), 500 << 10);
        assert!(parse_rate("100B").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
    }
}

//! The `xfer` binary: parse arguments, set up logging, run the command, and
//! turn its error into one line on stderr and an exit code
//! ([`Class::exit_code`], README.md "Exit codes").

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use xfer::cli::{self, Cli, Command, LogFormat};
use xfer::error::{Class, Error};

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2 from clap itself
    init_logging(&cli);
    xfer::platform::raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xfer: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let class = e.downcast_ref::<Error>().map(Error::class).unwrap_or(Class::Other);
            // Messages may quote the peer (an ERROR frame's text): never
            // let its control characters reach the terminal.
            eprintln!("xfer: {}", xfer::text::escape(&one_line(&e)));
            ExitCode::from(class.exit_code())
        }
    }
}

/// The error and its causes on one line, each said once (our error
/// messages already include their I/O cause's text).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The server logs at info by default, clients only warnings; -v and -q
/// move that, and RUST_LOG overrides it.
fn init_logging(cli: &Cli) {
    let base = if matches!(cli.command, Command::Serve(_)) { 2 } else { 1 };
    let level = if cli.quiet { 0 } else { base + i32::from(cli.verbose) };
    let directive = match level {
        0 => "xfer=error",
        1 => "xfer=warn",
        2 => "xfer=info",
        3 => "xfer=debug",
        _ => "xfer=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match cli.log_format {
        // A server's log is read later, line by line: timestamps help.
        LogFormat::Text if base == 2 => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // A client speaks to the person who ran it, in the style of its
        // other lines: `xfer: warning: …`.
        LogFormat::Text => logs.with_ansi(false).event_format(ClientLines).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// Client log lines: `xfer: warning: MESSAGE fields`, no timestamp.
struct ClientLines;

impl<S, N> FormatEvent<S, N> for ClientLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            _ => "",
        };
        // Warnings quote certificates' names and other text that is not
        // ours: one line, escaped, like every other line a client writes.
        let mut text = String::new();
        ctx.field_format().format_fields(Writer::new(&mut text), event)?;
        writeln!(w, "xfer: {level}{}", xfer::text::escape(&text))
    }
}

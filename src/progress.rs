//! Everything a client command tells its user: one line per file outcome
//! and a summary, either for people (stderr, quiet on success) or as JSON
//! Lines on stdout for machines (`--json`). Transfer code reports here and
//! never prints.

use std::collections::{HashMap, HashSet};

/// A set of paths kept as 128-bit BLAKE3 digests: a transfer of millions of
/// files (or a hostile server naming millions of paths) costs 16 bytes a
/// path here, not the path itself.
#[derive(Debug, Clone, Default)]
pub struct PathSet(HashSet<u128>);

impl PathSet {
    fn key(path: &str) -> u128 {
        let hash = blake3::hash(path.as_bytes());
        u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    /// True when `path` was not in the set.
    pub fn insert(&mut self, path: &str) -> bool {
        self.0.insert(PathSet::key(path))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.contains(&PathSet::key(path))
    }
}
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::error::{Class, Error, Result};
use crate::meter::{Display, Meter};
use crate::protocol::{ListEntry, Timestamp, WirePath};

/// How a command reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Summary and problems on stderr; listings on stdout.
    Human,
    /// As `Human`, with a line for each file found unchanged too (`-v`).
    Verbose,
    /// JSON Lines on stdout.
    Json,
    /// Only failures, on stderr (`--quiet`, and pulls to stdout).
    Quiet,
    /// Nothing at all (library use).
    Silent,
}

/// Which command is reporting, for wording and JSON field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Push,
    Pull,
    List,
    Remove,
}

/// Whether a JSON summary was written by this process.
static SUMMARY_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For a `--json` command that failed before it had a summary to give (a
/// usage error, a missing local file): one summary line that carries the
/// error, so every `--json` run ends with one.
pub fn json_failure(op: &str, class: Class, message: &str) {
    if SUMMARY_WRITTEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    json_line(&serde_json::json!({
        "type": "summary", "operation": op, "files": 0, "ok": 0, "skipped": 0, "failed": 0,
        "resumed": 0, "dirs": 0, "bytes": 0, "seconds": 0.0,
        "error": { "message": crate::text::escape(message), "class": class.name(), "exit_code": class.exit_code() },
    }));
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
    /// What a `--dry-run` would do (send, resume, remove); nothing was.
    #[serde(rename = "would")]
    Would,
}

/// One file's outcome.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Remote path, relative to the server's root.
    pub path: String,
    pub size: u64,
    pub blake3: Option<String>,
    /// Payload bytes that crossed the connection for this file (over all
    /// attempts of the command, once reported).
    pub bytes: u64,
    /// Where the payload of the last attempt started: 0, or the length of
    /// the partial copy it continued.
    pub resumed_from: u64,
    pub status: Status,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// For failures: the class that decides the exit code.
    pub class: Class,
    /// For a pull: where the file is on this machine.
    pub local: Option<String>,
    /// For a symbolic link sent or made as one: its target.
    pub link: Option<String>,
}

impl FileReport {
    /// A file that arrived (or was stored) and verified.
    pub fn ok(path: impl ToString, size: u64, blake3: &[u8; 32]) -> FileReport {
        let blake3 = Some(blake3::Hash::from_bytes(*blake3).to_hex().to_string());
        FileReport {
            path: path.to_string(),
            size,
            blake3,
            bytes: size,
            resumed_from: 0,
            status: Status::Ok,
            error: None,
            class: Class::Other,
            local: None,
            link: None,
        }
    }

    /// A file the receiver already held, identical (same size and BLAKE3):
    /// nothing was sent.
    pub fn unchanged(path: impl ToString, size: u64, blake3: &[u8; 32]) -> FileReport {
        let reason = "already there with the same BLAKE3; nothing sent".to_owned();
        FileReport { bytes: 0, status: Status::Skipped, error: Some(reason), ..FileReport::ok(path, size, blake3) }
    }

    /// A path that was done without a payload (a removal).
    pub fn done(path: impl ToString) -> FileReport {
        FileReport {
            path: path.to_string(),
            size: 0,
            blake3: None,
            bytes: 0,
            resumed_from: 0,
            status: Status::Ok,
            error: None,
            class: Class::Other,
            local: None,
            link: None,
        }
    }

    /// A symbolic link made as one (`--links`) at `path`, to `target`.
    pub fn linked(path: impl ToString, target: &str) -> FileReport {
        FileReport { link: Some(target.to_owned()), ..FileReport::done(path) }
    }

    /// Something deliberately not transferred (a symbolic link, say).
    pub fn skipped(path: impl ToString, reason: String) -> FileReport {
        FileReport {
            path: path.to_string(),
            size: 0,
            blake3: None,
            bytes: 0,
            resumed_from: 0,
            status: Status::Skipped,
            error: Some(reason),
            class: Class::Other,
            local: None,
            link: None,
        }
    }

    /// A failure; `class` decides the exit code. `size`, `blake3` and
    /// `bytes` can be filled in afterwards when known.
    pub fn failed(path: impl ToString, error: String, class: Class) -> FileReport {
        FileReport {
            path: path.to_string(),
            size: 0,
            blake3: None,
            bytes: 0,
            resumed_from: 0,
            status: Status::Failed,
            error: Some(error),
            class,
            local: None,
            link: None,
        }
    }
}

/// Totals of a finished command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub ok: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Files continued from a partial copy.
    pub resumed: usize,
    pub dirs: usize,
    /// Symbolic links made as links (`--links`).
    pub links: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// Collects outcomes, prints them per [`Output`], and decides the result.
#[derive(Debug)]
pub struct Reporter {
    output: Output,
    op: Op,
    started: Instant,
    sum: Summary,
    worst: Option<Class>,
    /// Live bars, when on a terminal; finished before the summary.
    meter: Meter,
    display: Option<Display>,
    /// Paths reported by this attempt and earlier ones, the part of them
    /// earlier attempts reported (a retry does not report those again),
    /// and folders already counted.
    done: PathSet,
    earlier: PathSet,
    dirs: PathSet,
    /// Payload bytes that earlier, failed attempts moved for files not yet
    /// reported.
    carry: HashMap<String, u64>,
    /// A `--dry-run`: the summary says what would be done.
    dry_run: bool,
}

impl Reporter {
    pub fn new(output: Output, op: Op) -> Reporter {
        let (meter, display) = (Meter::off(), None);
        Reporter {
            output,
            op,
            started: Instant::now(),
            sum: Summary::default(),
            worst: None,
            meter,
            display,
            done: PathSet::default(),
            earlier: PathSet::default(),
            dirs: PathSet::default(),
            carry: HashMap::new(),
            dry_run: false,
        }
    }

    /// Marks this as a `--dry-run`'s report.
    pub fn set_dry_run(&mut self, on: bool) {
        self.dry_run = on;
    }

    /// The same, drawing live progress bars on stderr (human output only);
    /// `forced` draws them even when stderr is not a terminal.
    pub fn with_bars(output: Output, op: Op, forced: bool) -> Reporter {
        let mut r = Reporter::new(output, op);
        if matches!(output, Output::Human | Output::Verbose) {
            let (meter, display) = Meter::bars(forced);
            (r.meter, r.display) = (meter, Some(display));
        }
        r
    }

    /// The handle transfer code feeds with progress.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Paths reported so far, which a retry need not send again.
    pub fn done_paths(&self) -> PathSet {
        self.done.clone()
    }

    /// An attempt failed and another follows after `delay`: the bytes moved
    /// for unfinished files are carried over, and the user is told.
    pub fn retrying(&mut self, e: &Error, attempt: u32, attempts: u32, delay: Duration) {
        for (path, n) in self.meter.take_all() {
            *self.carry.entry(path).or_default() += n;
        }
        self.earlier.clone_from(&self.done);
        let secs = delay.as_secs_f64();
        match self.output {
            Output::Json => json_line(&serde_json::json!({
                "type": "retry", "attempt": attempt + 1, "attempts": attempts, "delay_seconds": secs,
                "error": e.to_string(),
            })),
            Output::Human | Output::Verbose | Output::Quiet => {
                let line = format!("xfer: {e}; retrying in {secs:.1} s (attempt {} of {attempts})", attempt + 1);
                // Errors carry the server's words: escaped for the terminal.
                let line = crate::text::escape(&line).into_owned();
                if !self.meter.line(line.clone()) {
                    eprintln!("{line}");
                }
            }
            Output::Silent => {}
        }
    }

    /// Records one file (or removed path).
    pub fn file(&mut self, mut r: FileReport) {
        // A retry met a file an earlier attempt already reported.
        if self.earlier.contains(&r.path) {
            return;
        }
        self.done.insert(&r.path);
        let carried = self.carry.remove(&r.path).unwrap_or(0);
        r.bytes += carried;
        // Found identical by a retry because an earlier attempt sent it
        // whole before the connection broke: it was transferred.
        if r.status == Status::Skipped && r.blake3.is_some() && carried > 0 {
            (r.status, r.error) = (Status::Ok, None);
        }
        self.meter.take_bytes(&r.path);
        self.meter.done();
        match r.status {
            Status::Ok | Status::Would if r.link.is_some() => self.sum.links += 1,
            Status::Ok => {
                self.sum.ok += 1;
                self.sum.bytes += r.bytes;
                if r.resumed_from > 0 {
                    self.sum.resumed += 1;
                }
            }
            Status::Skipped => self.sum.skipped += 1,
            Status::Would => {
                self.sum.ok += 1;
                self.sum.bytes += r.bytes;
            }
            // The summary's bytes are verified bytes only; a failed file's
            // bytes still show on its own JSON line.
            Status::Failed => {
                self.sum.failed += 1;
                self.worst = self.worst.max(Some(r.class));
            }
        }
        match self.output {
            Output::Json => {
                let bytes_key = if self.op == Op::Pull { "bytes_received" } else { "bytes_sent" };
                let mut v = serde_json::json!({
                    "type": "file", "path": r.path, "size": r.size, "blake3": r.blake3,
                    "status": r.status, "resumed_from": r.resumed_from,
                });
                v[bytes_key] = r.bytes.into();
                if let Some(local) = &r.local {
                    v["local"] = local.clone().into();
                }
                if let Some(target) = &r.link {
                    v["link"] = target.clone().into();
                }
                if let Some(e) = &r.error {
                    v["error"] = e.clone().into();
                }
                json_line(&v);
            }
            Output::Human | Output::Verbose | Output::Quiet => {
                // A file found unchanged (same BLAKE3) is the common case
                // of a re-run: counted, listed only with -v. Other skips
                // (a link not followed) are worth a line.
                let unchanged = r.blake3.is_some() || r.error.as_deref().is_some_and(|e| e.starts_with("already "));
                let line = match r.status {
                    // Said as it happened when bars are drawn; else now.
                    Status::Ok if r.resumed_from > 0 && self.display.is_none() && self.output != Output::Quiet => {
                        Some(format!("xfer: resumed {} at {}", r.path, human_bytes(r.resumed_from)))
                    }
                    Status::Ok => None,
                    Status::Would if self.output == Output::Quiet => None,
                    Status::Would if r.link.is_some() => {
                        Some(format!("would link {} -> {}", r.path, r.link.as_deref().unwrap_or_default()))
                    }
                    Status::Would => Some(match (self.op, r.resumed_from) {
                        (Op::Remove, _) => format!("would remove {}", r.path),
                        (Op::Pull, 0) => format!("would receive {} ({})", r.path, human_bytes(r.size)),
                        (_, 0) => format!("would send {} ({})", r.path, human_bytes(r.size)),
                        (_, at) => format!("would resume {} at {} of {}", r.path, human_bytes(at), human_bytes(r.size)),
                    }),
                    Status::Skipped
                        if self.output == Output::Verbose || (self.output == Output::Human && !unchanged) =>
                    {
                        Some(format!("xfer: skipped {}: {}", r.path, r.error.unwrap_or_default()))
                    }
                    Status::Skipped => None,
                    Status::Failed => Some(format!("xfer: failed: {}", r.error.unwrap_or(r.path))),
                };
                // Reasons and errors may be the server's words, names the
                // sender's: escaped before they reach a terminal. Above the
                // bars when they are drawn, else straight to stderr.
                let line = line.map(|l| crate::text::escape(&l).into_owned());
                if let Some(line) = line.filter(|l| !self.meter.line(l.clone())) {
                    eprintln!("{line}");
                }
            }
            Output::Silent => {}
        }
    }

    /// Records a folder created or sent (once, however many attempts).
    pub fn dir(&mut self, path: &str) {
        if self.dirs.insert(path) {
            self.sum.dirs += 1;
        }
    }

    /// Prints one `ls` entry.
    pub fn entry(&mut self, e: &ListEntry) {
        self.sum.ok += 1;
        if e.is_dir {
            self.sum.dirs += 1;
        }
        match self.output {
            Output::Json => json_line(&serde_json::json!({
                "type": "entry", "path": e.path.as_str(), "size": e.size,
                "mtime": iso8601(e.mtime), "dir": e.is_dir,
            })),
            Output::Human | Output::Verbose => {
                let name = e.path.file_name().unwrap_or(".");
                let slash = if e.is_dir { "/" } else { "" };
                // A closed stdout (`xfer ls host | head`) is not an error.
                let _ = writeln!(std::io::stdout().lock(), "{:>12}  {}  {name}{slash}", e.size, iso8601(e.mtime));
            }
            Output::Quiet | Output::Silent => {}
        }
    }

    /// One symbolic link of a listing, with its target (escaped: it is
    /// the server's text).
    pub fn link_entry(&mut self, path: &WirePath, target: &str) {
        self.sum.links += 1;
        match self.output {
            Output::Json => json_line(&serde_json::json!({
                "type": "entry", "path": path.as_str(), "size": 0, "dir": false, "link": target,
            })),
            Output::Human | Output::Verbose => {
                let name = path.file_name().unwrap_or(".");
                let line = format!("{:>12}  {:<20}  {name} -> {target}", "link", "");
                let _ = writeln!(std::io::stdout().lock(), "{}", crate::text::escape(&line));
            }
            Output::Quiet | Output::Silent => {}
        }
    }

    /// Prints the summary; fails with the worst class if anything failed.
    pub fn finish(self) -> Result<Summary> {
        self.finish_after(None)
    }

    /// Prints the summary of a command that may have ended with `error`
    /// (the connection lost, Ctrl-C): a JSON summary then carries it, and
    /// the summary line says what was done before it, never more.
    pub fn finish_after(mut self, error: Option<&Error>) -> Result<Summary> {
        if let Some(display) = self.display.take() {
            display.finish();
        }
        self.sum.seconds = self.started.elapsed().as_secs_f64();
        let s = &self.sum;
        match self.output {
            Output::Json => {
                SUMMARY_WRITTEN.store(true, std::sync::atomic::Ordering::SeqCst);
                let mut v = serde_json::json!({
                    "type": "summary", "operation": format!("{:?}", self.op).to_lowercase(),
                    "files": s.ok + s.skipped + s.failed + s.links, "ok": s.ok, "skipped": s.skipped,
                    "failed": s.failed, "resumed": s.resumed, "dirs": s.dirs, "links": s.links, "bytes": s.bytes,
                    "seconds": s.seconds,
                });
                if self.dry_run {
                    v["dry_run"] = true.into();
                }
                let class = error.map(Error::class).or(self.worst);
                if let Some(class) = class {
                    let message = match error {
                        Some(e) => e.to_string(),
                        None => format!("{} of {} items failed", s.failed, s.ok + s.skipped + s.failed),
                    };
                    v["error"] = serde_json::json!({
                        "message": crate::text::escape(&message), "class": class.name(),
                        "exit_code": class.exit_code(),
                    });
                }
                json_line(&v);
            }
            Output::Human | Output::Verbose if self.op != Op::List => eprintln!("{}", self.human_summary(error)),
            _ => {}
        }
        match self.worst {
            Some(class) => Err(Error::Failed { failed: s.failed, total: s.ok + s.skipped + s.failed, class }),
            None => Ok(std::mem::take(&mut self.sum)),
        }
    }

    /// One line: what was done, verified, skipped and failed. After an
    /// error that ended the command it says the command stopped, and
    /// claims verification only for the files that were verified.
    fn human_summary(&self, error: Option<&Error>) -> String {
        let s = &self.sum;
        let (verb, noun) = match self.op {
            Op::Push => ("pushed", "file"),
            Op::Pull => ("pulled", "file"),
            Op::Remove => ("removed", "path"),
            Op::List => ("listed", "entry"),
        };
        let plural = if s.ok == 1 { "" } else { "s" };
        if self.dry_run {
            let verb = if self.op == Op::Remove { "remove" } else { self.op_name() };
            let mut line = format!("dry run: would {verb} {} {noun}{plural}", s.ok);
            if self.op != Op::Remove {
                line += &format!(" ({})", human_bytes(s.bytes));
            }
            if s.skipped > 0 {
                line += &format!("; {} unchanged or skipped", s.skipped);
            }
            if s.failed > 0 {
                line += &format!("; {} FAILED", s.failed);
            }
            return line + "; nothing was changed";
        }
        let mut line = match (error, s.ok) {
            (Some(_), 0) => format!("{} stopped before any {noun} was {verb}", self.op_name()),
            (Some(_), n) => format!("{} stopped: {n} {noun}{plural} {verb} before that", self.op_name()),
            (None, n) => format!("{verb} {n} {noun}{plural}"),
        };
        if self.op != Op::Remove && s.ok > 0 {
            let mib = s.bytes as f64 / (1024.0 * 1024.0);
            let rate = if s.seconds > 0.0 { mib / s.seconds } else { 0.0 };
            line += &format!(" ({mib:.1} MiB) in {:.2} s, {rate:.1} MiB/s, verified with BLAKE3", s.seconds);
        }
        if s.links > 0 {
            line += &format!("; {} symbolic link{}", s.links, if s.links == 1 { "" } else { "s" });
        }
        if s.skipped > 0 {
            line += &format!("; {} unchanged or skipped", s.skipped);
        }
        if s.resumed > 0 {
            line += &format!("; {} resumed", s.resumed);
        }
        if s.failed > 0 {
            line += &format!("; {} FAILED", s.failed);
        }
        line
    }

    fn op_name(&self) -> &'static str {
        match self.op {
            Op::Push => "push",
            Op::Pull => "pull",
            Op::Remove => "rm",
            Op::List => "ls",
        }
    }
}

impl Drop for Reporter {
    /// A command that ends early (say, the connection failed) still
    /// leaves the terminal clean.
    fn drop(&mut self) {
        if let Some(display) = self.display.take() {
            display.finish();
        }
    }
}

/// A byte count for people, as indicatif writes it: `512 B`, `1.50 KiB`.
pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// A timestamp as ISO 8601 / RFC 3339 in UTC, seconds precision.
pub fn iso8601(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.secs)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.secs.to_string())
}

fn json_line(v: &serde_json::Value) {
    let line = inert_json(v.to_string());
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not worth failing a transfer for.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// JSON text with every character a terminal may act on (DEL, C1
/// controls, bidi and invisible formatting; serde_json escapes only C0)
/// written as a `\u` escape: the same string to a JSON reader, inert bytes
/// to a terminal or log viewer. Such characters can only occur inside
/// strings, so escaping them never changes the document's structure.
fn inert_json(s: String) -> String {
    if !s.chars().any(crate::text::is_unsafe) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if crate::text::is_unsafe(c) {
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_same_text_in_inert_bytes() {
        let text = "a\u{9b}2J\u{7f}\u{202e}b\u{e0041}\u{1b}";
        let line = inert_json(serde_json::json!({ "error": text }).to_string());
        assert!(!line.chars().any(|c| crate::text::is_unsafe(c) || c.is_control()), "{line}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["error"], text);
    }

    #[test]
    fn byte_counts_and_times_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(10 << 30), "10.00 GiB");
        assert_eq!(iso8601(Timestamp { secs: 1_700_000_000, nanos: 5 }), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_retry_reports_each_file_once_with_the_bytes_of_every_attempt() {
        let mut rep = Reporter::new(Output::Silent, Op::Push);
        rep.file(FileReport::ok("a", 3, &[1; 32]));
        rep.meter().start("b", Some(100));
        rep.meter().bytes(60);
        rep.meter().start("c", Some(10));
        rep.meter().bytes(10);
        let e = Error::Usage("cut".into());
        rep.retrying(&e, 1, 4, Duration::ZERO);
        rep.file(FileReport::unchanged("a", 3, &[1; 32])); // met again: not reported twice
        rep.file(FileReport { bytes: 40, resumed_from: 60, ..FileReport::ok("b", 100, &[2; 32]) });
        rep.file(FileReport::unchanged("c", 10, &[3; 32])); // sent whole before the cut
        let sum = rep.finish().unwrap();
        assert_eq!((sum.ok, sum.skipped, sum.resumed), (3, 0, 1));
        assert_eq!(sum.bytes, 3 + 100 + 10);
    }
}

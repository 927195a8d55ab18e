//! Live progress while bytes move: a cheap [`Meter`] handle that transfer
//! code feeds (file started, bytes moved), and a display thread that draws
//! indicatif bars from those events on a terminal.
//!
//! Transfer code never touches indicatif: it only sends events, and with
//! [`Meter::off`] (servers, JSON, pipes, `--quiet`) sending is a no-op.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the display learns.
#[derive(Debug)]
enum Event {
    /// The sender's tree scan so far (`done` once complete).
    Counted { files: u64, bytes: u64, done: bool },
    /// A file's payload begins.
    Start { path: String, size: Option<u64> },
    /// ...at this offset (resumed).
    Resumed(u64),
    /// Payload bytes moved.
    Bytes(u64),
    /// Bytes of the total that need not move (a file already there).
    Settled(u64),
    /// A file's outcome is known.
    Done,
    /// A line to print above the bars.
    Line(String),
    /// Clear the bars and stop.
    Finish,
}

/// A handle for reporting progress; clones share one display. It also
/// tallies the payload bytes moved per file, drawn or not, so a command
/// that retries can count a file's bytes over all its attempts.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    tx: Option<mpsc::Sender<Event>>,
    closed: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    /// Prefix for the paths this clone reports (a pull names files from
    /// the parent of what was asked for).
    base: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Tally {
    current: String,
    bytes: HashMap<String, u64>,
}

/// The display thread, to be finished before the summary is printed.
#[derive(Debug)]
pub struct Display {
    meter: Meter,
    thread: JoinHandle<()>,
}

impl Meter {
    /// A meter that shows nothing.
    pub fn off() -> Meter {
        Meter::default()
    }

    /// A meter drawing bars on stderr, and the display to finish later;
    /// `forced` draws them even when stderr is not a terminal
    /// (`--progress`, for CI systems that render them).
    pub fn bars(forced: bool) -> (Meter, Display) {
        let (tx, rx) = mpsc::channel();
        let meter = Meter { tx: Some(tx), ..Meter::default() };
        let thread = std::thread::spawn(move || draw(rx, forced));
        (meter.clone(), Display { meter, thread })
    }

    /// True while a display is listening (false once finished).
    pub fn is_on(&self) -> bool {
        self.tx.is_some() && !self.closed.load(Ordering::Relaxed)
    }

    fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }

    pub fn counted(&self, files: u64, bytes: u64, done: bool) {
        self.send(Event::Counted { files, bytes, done });
    }
    /// A clone whose paths are under `base`.
    pub fn based(&self, base: &str) -> Meter {
        Meter { base: (!base.is_empty()).then(|| Arc::from(base)), ..self.clone() }
    }

    pub fn start(&self, path: &str, size: Option<u64>) {
        let path = match &self.base {
            Some(base) => format!("{base}/{path}"),
            None => path.to_owned(),
        };
        self.tally.lock().expect("meter tally poisoned").current.clone_from(&path);
        self.send(Event::Start { path, size });
    }
    /// The file just started continues a partial copy of `offset` bytes.
    pub fn resumed(&self, offset: u64) {
        if offset > 0 {
            self.send(Event::Resumed(offset));
        }
    }
    pub fn bytes(&self, n: u64) {
        let mut t = self.tally.lock().expect("meter tally poisoned");
        let Tally { current, bytes } = &mut *t;
        match bytes.get_mut(current.as_str()) {
            Some(b) => *b += n,
            None => {
                bytes.insert(current.clone(), n);
            }
        }
        drop(t);
        self.send(Event::Bytes(n));
    }
    /// Takes the bytes tallied for `path` since it was last taken.
    pub fn take_bytes(&self, path: &str) -> u64 {
        self.tally.lock().expect("meter tally poisoned").bytes.remove(path).unwrap_or(0)
    }
    /// Takes every file's tally (an attempt failed; they will be retried).
    pub fn take_all(&self) -> HashMap<String, u64> {
        std::mem::take(&mut self.tally.lock().expect("meter tally poisoned").bytes)
    }
    pub fn done(&self) {
        self.send(Event::Done);
    }
    /// `n` bytes of the total are already where they belong: the total
    /// bar advances, the rate does not count them as moved.
    pub fn settled(&self, n: u64) {
        if n > 0 {
            self.send(Event::Settled(n));
        }
    }

    /// Prints `line` above the bars; `false` when no display is on (the
    /// caller prints it itself).
    pub fn line(&self, line: String) -> bool {
        if !self.is_on() {
            return false;
        }
        self.send(Event::Line(line));
        true
    }
}

impl Display {
    /// Clears the bars and waits for the display to let go of the terminal.
    pub fn finish(self) {
        self.meter.send(Event::Finish);
        self.meter.closed.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn draw(rx: mpsc::Receiver<Event>, forced: bool) {
    let target = match forced {
        // indicatif hides a terminal target that is not a terminal; a
        // `TermLike` target is drawn whatever it is.
        true => ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 10),
        false => ProgressDrawTarget::stderr_with_hz(10),
    };
    let multi = MultiProgress::with_draw_target(target);
    let total = multi.add(ProgressBar::no_length());
    total.set_style(style("{spinner} {msg}  {binary_bytes} {binary_bytes_per_sec}"));
    total.enable_steady_tick(Duration::from_millis(200));
    // The file in flight; added below the total once the first file starts.
    let mut file: Option<ProgressBar> = None;
    let (mut done, mut counted, mut scanning) = (0u64, None::<u64>, false);
    let files_msg = |done: u64, counted: Option<u64>, scanning: bool| match (counted, scanning) {
        (Some(n), false) => format!("{done}/{n} files"),
        (Some(n), true) => format!("{done} files, counting… {n} so far"),
        (None, _) => format!("{done} files"),
    };
    for ev in rx {
        match ev {
            // Nothing countable (standard input): no total to fill a bar.
            Event::Counted { files: 0, done: true, .. } => {}
            Event::Counted { files, bytes, done: finished } => {
                counted = Some(files);
                scanning = !finished;
                if total.length().is_none() {
                    total.set_style(style(
                        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    ));
                }
                total.set_length(bytes);
            }
            Event::Start { path, size } => {
                // Shaped while hidden (a bar of its own would draw on stderr
                // past the display, leaving lines behind), then drawn by
                // the display once added, and reused per file.
                let bar = file.clone().unwrap_or_else(ProgressBar::hidden);
                bar.reset();
                shape_file_bar(&bar, size);
                bar.set_message(path);
                if file.is_none() {
                    file = Some(multi.add(bar));
                }
            }
            Event::Resumed(offset) => {
                // The bar starts where the copy is; its rate and ETA count
                // only what moves now, not the resumed prefix.
                if let Some(bar) = &file {
                    bar.set_position(offset);
                    bar.reset_eta();
                    let _ = multi.println(format!(
                        "xfer: resuming {} at {}",
                        crate::text::escape(&bar.message()),
                        crate::progress::human_bytes(offset)
                    ));
                }
                total.inc(offset);
                total.reset_eta();
            }
            Event::Bytes(n) => {
                if let Some(bar) = &file {
                    bar.inc(n);
                }
                total.inc(n);
            }
            Event::Settled(n) => {
                total.inc(n);
                total.reset_eta();
            }
            Event::Done => done += 1,
            Event::Line(l) => {
                let _ = multi.println(l);
            }
            Event::Finish => break,
        }
        total.set_message(files_msg(done, counted, scanning));
    }
    if let Some(bar) = file {
        bar.finish_and_clear();
    }
    total.finish_and_clear();
    let _ = multi.clear();
}

/// A bar against the file's size, or for standard input (no size known)
/// a spinner with bytes and rate.
fn shape_file_bar(bar: &ProgressBar, size: Option<u64>) {
    match size {
        Some(size) => {
            bar.disable_steady_tick();
            bar.set_style(style("  {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}"));
            bar.set_length(size);
        }
        None => {
            bar.set_style(style("  {spinner} {msg}  {binary_bytes} {binary_bytes_per_sec}"));
            bar.unset_length();
            bar.enable_steady_tick(Duration::from_millis(200));
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid progress template").progress_chars("=> ")
}

//! What a `GET`'s answer may hold, as a pulling client checks it: a
//! total first or not at all, only what was asked for (a file is the whole
//! answer), nothing `--exclude` leaves out.

use tokio::io::ReadHalf;

use super::Tls;
use crate::connection::FrameReader;
use crate::error::{Error, Result};
use crate::meter::Meter;
use crate::protocol::{Frame, WirePath};

/// The totals the server announced, summed over the `GET`s so far: drawn
/// only while every answer so far had one.
#[derive(Debug, Default)]
pub(super) struct Totals {
    files: u64,
    bytes: u64,
    all_counted: bool,
    answers: u64,
}

impl Totals {
    /// A new answer begins, with a `TOTAL` first or not.
    pub(super) fn answer(&mut self, has_total: bool) {
        self.all_counted = has_total && (self.answers == 0 || self.all_counted);
        self.answers += 1;
    }

    pub(super) fn add(&mut self, files: u64, bytes: u64, meter: &Meter) {
        self.files = self.files.saturating_add(files);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.all_counted {
            meter.counted(self.files, self.bytes, true);
        }
    }
}

/// The path of an item `filter` excludes, if `frame` is one.
pub(super) fn excluded_item(frame: &Frame, filter: Option<&crate::walk::Filter>) -> Option<WirePath> {
    let filter = filter?;
    let (path, is_dir) = match frame {
        Frame::File(h) => (&h.path, false),
        Frame::Dir { path, .. } => (path, true),
        Frame::Link { path, .. } => (path, false),
        _ => return None,
    };
    filter.excludes(path.as_str(), is_dir).then(|| path.clone())
}

/// What a `GET` response showed of the item asked for: it comes once, and
/// a file is the whole answer (nothing may follow it, nothing below it).
#[derive(Default)]
pub(super) struct Shape {
    top_seen: bool,
    top_is_file: bool,
}

impl Shape {
    pub(super) fn check(
        &mut self,
        r: &FrameReader<ReadHalf<Tls>>,
        asked: &WirePath,
        got: &WirePath,
        file: bool,
    ) -> Result<()> {
        let bad = |what: &str| Err(Error::protocol(r.peer(), format!("{what} in answer to a request for '{asked}'")));
        if self.top_is_file {
            return bad(&format!("sent '{got}' after the file"));
        }
        // The item itself: `Get x/d` names it `d` (the root has none).
        if asked.file_name().is_some() && got.components().nth(1).is_none() {
            if std::mem::replace(&mut self.top_seen, true) {
                return bad(&format!("sent '{got}' twice"));
            }
            self.top_is_file = file;
        }
        Ok(())
    }
}

/// A server may only send what was asked for: `Get x/d` yields `d/…`.
pub(super) fn check_within(r: &FrameReader<ReadHalf<Tls>>, asked: &WirePath, got: &WirePath) -> Result<()> {
    let ok = match asked.file_name() {
        None => !got.is_root(),
        Some(name) => got.components().next() == Some(name),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::protocol(r.peer(), format!("sent '{got}' in answer to a request for '{asked}'")))
    }
}

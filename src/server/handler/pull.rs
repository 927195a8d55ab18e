//! A pull, on the server: the client's `OFFER`s kept within the protocol's
//! bounds and the memory budget, then each `GET` answered by walking the
//! tree and sending its files (only the rest of those the client holds in
//! part, nothing of those it holds whole); and `LIST`.

use std::time::Instant;

use tracing::warn;

use super::{Conn, SHUTTING_DOWN};
use crate::auth::Perm;
use crate::error::{Error, Result};
use crate::meter::Meter;
use crate::protocol::{
    ErrorCode, FileHeader, Frame, FrameError, Have, MAX_OFFER_BYTES, MAX_OFFERS, Offer, Timestamp, WirePath,
};
use crate::server::storage::Storage;
use crate::transfer::{self, SendOutcome, blocking};
use crate::walk::{Filter, Item};

/// Memory an offer holds besides its path (map entry, sizes, hash).
const OFFER_OVERHEAD: usize = 160;

/// A `GET`'s answer is counted first (for the client's `TOTAL`) only up to
/// this many entries (folders included) and this long: past either, it goes without a total
/// rather than making every large pull walk its tree twice.
const TOTAL_MAX_ITEMS: u64 = 100_000;
const TOTAL_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Memory charged per pattern of a `FILTER`: compiled globs are regular
/// expressions whose matching caches grow far past their text (64 patterns
/// of 4 wildcards, the most a filter takes, raised a release server's peak
/// by 24 MB on 300 names; 128 KiB each charges 8 MiB for them, half of a
/// peer's share of the default budget).
const FILTER_COST: usize = 128 * 1024;

impl Conn {
    /// Keeps what a pulling client holds, within the protocol's bounds (a
    /// client past them is cut off: it broke the protocol) and the server's
    /// memory budget (past it, offers are ignored and those files are sent
    /// whole, which the protocol allows).
    pub(super) fn offer(&mut self, o: Offer) -> Result<()> {
        self.count_offer(o.body_len())?;
        let Some(charge) = self.budget.try_charge(o.path.as_str().len() + OFFER_OVERHEAD) else {
            return Ok(());
        };
        let have = Have { offset: o.offset, prefix: o.prefix, complete: None };
        self.offers.insert(o.path, (transfer::Held { size: o.size, mtime: o.mtime, have }, charge));
        Ok(())
    }

    /// An `OFFER` whose path breaks the rules: ignored (it has no reply),
    /// but counted like any other, and logged once per connection.
    pub(super) fn bad_offer(&mut self, error: &FrameError) -> Result<()> {
        self.count_offer(Offer::body_len_for(&WirePath::root()) + error.path_len())?;
        if !std::mem::replace(&mut self.bad_offer_logged, true) {
            warn!("ignored an offer (and will ignore more quietly): {error}");
        }
        Ok(())
    }

    /// Counts an `OFFER` of `body` bytes against the protocol's bounds: a
    /// client past them broke the protocol and is cut off.
    fn count_offer(&mut self, body: usize) -> Result<()> {
        self.offered.0 += 1;
        self.offered.1 += body;
        if self.offered.0 > MAX_OFFERS || self.offered.1 > MAX_OFFER_BYTES {
            return Err(Error::protocol(
                self.r.peer(),
                format!("more than {MAX_OFFERS} OFFERs or {MAX_OFFER_BYTES} bytes of them on one connection"),
            ));
        }
        Ok(())
    }

    /// Sends a file or a tree, then `Ok`; first a `Total` of what it will
    /// send, when counting it first is cheap.
    pub(super) async fn get(&mut self, path: WirePath) -> Result<()> {
        if let Err(e) = self.authorize(Perm::Read, &path) {
            return self.answer(&path, "pull", Err(e)).await;
        }
        let root = match &self.shared.storage {
            Storage::Local(root) => root.clone(),
            #[cfg(feature = "s3")]
            Storage::Objects(b) => return self.get_objects(b.clone(), path).await,
        };
        let (r, p) = (root.clone(), path.clone());
        let walk = match blocking(move || r.walk(&p)).await {
            Ok(w) => w,
            Err(e) => return self.answer(&path, "pull", Err(e)).await,
        };
        // The client's bars get a total and an ETA when counting is cheap.
        let p = path.clone();
        let filter = self.get_filter.as_ref().map(|(f, _)| f.clone());
        let f2 = filter.clone();
        let total =
            blocking(move || root.walk(&p).ok().and_then(|w| w.filtered(f2, 0).count(TOTAL_MAX_ITEMS, TOTAL_MAX_TIME)))
                .await;
        if let Some((files, bytes)) = total {
            self.w.send(&Frame::Total { files, bytes }).await?;
        }
        let mut items = transfer::spawn_walk(walk.filtered(filter, 0), self.budget.clone());
        let mut first = true;
        while let Some(item) = transfer::next_item(&mut items, &mut self.w).await? {
            // The first item of a GET for one file is that file.
            let single_file = std::mem::take(&mut first) && matches!(item, Item::File { .. });
            if self.token.is_cancelled() {
                // The file in flight has finished; the rest of the tree waits.
                self.stopped_mid_response = true;
                let message = SHUTTING_DOWN.to_owned();
                return self.w.send(&Frame::Error { code: ErrorCode::ShuttingDown, message }).await;
            }
            match item {
                Item::Dir { rel, meta } => {
                    self.w.send(&Frame::Dir { path: rel, mode: meta.mode, mtime: meta.mtime }).await?;
                }
                Item::File { rel, dir, name, ahead, .. } => {
                    let started = Instant::now();
                    // A copy the client holds, whole or in part: send the
                    // rest (nothing, if it is whole and identical).
                    let held = self.offers.get(&rel).map(|(held, _)| held.clone());
                    let w = &mut self.w;
                    match transfer::send_file(w, &rel, &dir, &name, &Meter::off(), held.as_ref(), ahead).await? {
                        SendOutcome::Sent(s) => self.log_file("sent", &rel, s.size - s.offset, &s.blake3, started),
                        // Offers carry no complete hash, so this cannot happen.
                        SendOutcome::Same { .. } => {}
                        SendOutcome::Aborted { reason, .. } => warn!(path = %rel, "pull of file abandoned: {reason}"),
                        // A GET of just this file: refuse it outright, with
                        // the cause's code (permission denied is exit 4).
                        SendOutcome::NotStarted { code, reason } if single_file => {
                            warn!(path = %rel, "pull refused: {reason}");
                            return self.w.send(&Frame::Error { code, message: reason }).await;
                        }
                        SendOutcome::NotStarted { reason, .. } => self.send_failed(&rel, &reason).await?,
                    }
                }
                // Sent as a link; the client makes it or not (`--links`).
                Item::Link { rel, target } => self.w.send(&Frame::Link { path: rel, target }).await?,
                // A name that cannot be sent is reported under a valid
                // stand-in, so the client still learns of it.
                Item::Skipped { rel, reason } => {
                    self.w.send(&Frame::Skipped { path: WirePath::lossy(&rel), reason }).await?;
                }
                Item::Failed { rel, error } => self.send_failed(&WirePath::lossy(&rel), &error).await?,
            }
        }
        self.w.send(&Frame::Ok).await
    }

    /// Tells a pulling client that one file of a tree could not be read: an
    /// empty header and an `Abort`, so it is reported as failed, not skipped.
    pub(super) async fn send_failed(&mut self, path: &WirePath, reason: &str) -> Result<()> {
        warn!(path = %path, "cannot send: {reason}");
        let h = FileHeader::new(path.clone(), 0, 0o600, Timestamp::default());
        self.w.send(&Frame::File(h)).await?;
        self.w.send(&Frame::Abort { reason: format!("the server cannot read it: {reason}") }).await
    }

    /// Takes the patterns of a `FILTER` for the `GET`s that follow, or
    /// refuses them (`BAD_PATH`), keeping the previous filter then.
    pub(super) async fn set_filter(&mut self, patterns: &str) -> Result<()> {
        // Compiled globs take far more than their text: charged per pattern.
        let lines = patterns.split('\n').filter(|l| crate::walk::is_pattern(l)).count();
        let cost = lines.saturating_mul(FILTER_COST).max(4096);
        // More than this peer's whole share can never be taken: said so,
        // not "busy" (a retry would not help).
        if cost > self.budget.limit() {
            let fit = self.budget.limit() / FILTER_COST;
            let message = format!("{lines} patterns: this server takes at most {fit} from one peer");
            return self.reply_in_order(Frame::Error { code: ErrorCode::BadPath, message }).await;
        }
        let Some(charge) = self.budget.try_charge(cost) else {
            let message = "the server is too busy to filter: send without --exclude, or retry later".to_owned();
            return self.reply_in_order(Frame::Error { code: ErrorCode::Busy, message }).await;
        };
        let parsed = blocking({
            let p = patterns.to_owned();
            move || Filter::from_text(&p)
        })
        .await;
        match parsed {
            Ok(filter) => {
                self.get_filter = filter.map(|f| (f, charge));
                self.reply_in_order(Frame::Ok).await
            }
            Err(e) => {
                let message = format!("invalid --exclude/--include patterns: {e}");
                self.reply_in_order(Frame::Error { code: ErrorCode::BadPath, message }).await
            }
        }
    }

    pub(super) async fn list(&mut self, path: WirePath) -> Result<()> {
        if let Err(e) = self.authorize(Perm::Read, &path) {
            return self.answer(&path, "list", Err(e)).await;
        }
        match self.shared.storage.list(&path).await {
            Ok((entries, links)) => {
                for e in entries {
                    self.w.send(&Frame::Entry(e)).await?;
                }
                for (path, target) in links {
                    self.w.send(&Frame::Link { path, target }).await?;
                }
                self.w.send(&Frame::Ok).await
            }
            Err(e) => self.answer(&path, "list", Err(e)).await,
        }
    }
}

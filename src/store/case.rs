//! Names that differ only by case, where the filesystem does not tell them
//! apart (Windows and macOS by default, ext4 with casefold): within one
//! transfer, `Readme` after `README` would silently replace it, so the
//! second is refused instead.
//!
//! Each transfer keeps the paths it wrote, by their case-folded form
//! (Unicode lower case: close to, not exactly, what NTFS and APFS fold).
//! The record is bounded ([`MAX_BYTES`], and on a server charged to the
//! peer's share of the memory budget): past either, it starts over. A
//! sender's walk is depth-first and sorted, so names that differ only by
//! case come close together, and a hostile sender gains nothing by evading
//! the check (it may overwrite whatever it may write anyway).

use std::collections::HashMap;
use std::ffi::OsStr;

use super::StoreError;
use crate::beneath::DirFd;
use crate::budget::{Budget, Charge};
use crate::protocol::{ErrorCode, WirePath};

/// Memory one transfer's record may hold.
const MAX_BYTES: usize = 1 << 20;
/// Charged to a budget this much at a time.
const CHUNK: usize = 64 << 10;

/// The paths one transfer wrote, by their case-folded form; inert where
/// the filesystem tells case apart.
#[derive(Default)]
pub struct CaseNames {
    on: bool,
    seen: HashMap<String, WirePath>,
    /// What `seen` holds, counted generously: both strings, the table's
    /// slot, its growth and the allocator's rounding.
    bytes: usize,
    budget: Option<Budget>,
    charges: Vec<Charge>,
}

impl std::fmt::Debug for CaseNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseNames").field("on", &self.on).field("paths", &self.seen.len()).finish()
    }
}

impl CaseNames {
    /// A record for a transfer into a filesystem that does (`insensitive`)
    /// or does not fold case.
    pub fn new(insensitive: bool) -> CaseNames {
        CaseNames { on: insensitive, ..CaseNames::default() }
    }

    /// The same, its memory charged to `budget` (a server's peer's share).
    pub fn charged_to(self, budget: Budget) -> CaseNames {
        CaseNames { budget: Some(budget), ..self }
    }

    /// Refuses `p` when this transfer already wrote a path that differs
    /// from it only by case; otherwise remembers it.
    pub fn check(&mut self, p: &WirePath) -> Result<(), StoreError> {
        if !self.on {
            return Ok(());
        }
        let folded = p.as_str().to_lowercase();
        if let Some(earlier) = self.seen.get(&folded) {
            if earlier != p {
                return Err(StoreError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{p}: differs only by case from {earlier}, sent earlier in this transfer; the receiver's \
                         filesystem does not tell them apart, so it is refused rather than written over {earlier}"
                    ),
                ));
            }
            return Ok(());
        }
        let cost = 2 * (folded.len() + p.as_str().len()) + 128;
        if !self.room_for(cost) {
            self.seen = HashMap::new();
            self.charges.clear();
            self.bytes = 0;
            if !self.room_for(cost) {
                return Ok(()); // no memory for even one: unchecked
            }
        }
        self.bytes += cost;
        self.seen.insert(folded, p.clone());
        Ok(())
    }

    /// Whether `cost` more bytes fit, charging the budget as needed.
    fn room_for(&mut self, cost: usize) -> bool {
        if self.bytes + cost > MAX_BYTES {
            return false;
        }
        let Some(budget) = &self.budget else { return true };
        while self.bytes + cost > self.charges.len() * CHUNK {
            match budget.try_charge(CHUNK) {
                Some(c) => self.charges.push(c),
                None => return false,
            }
        }
        true
    }
}

/// Whether the filesystem of `dir` folds case: a new file's name, asked
/// for in capitals, is found. Where the probe cannot be made (a read-only
/// root), the platform's usual answer. Debug builds can be told to answer
/// yes (`XFER_FAULT_CASE_INSENSITIVE`), to test the rule on Linux.
pub fn folds_case(dir: &DirFd) -> bool {
    #[cfg(debug_assertions)]
    if std::env::var_os("XFER_FAULT_CASE_INSENSITIVE").is_some() {
        return true;
    }
    let Ok((file, name)) = dir.create_temp(".xfer-case-") else {
        return cfg!(any(windows, target_os = "macos"));
    };
    drop(file);
    let folds = matches!(dir.stat(OsStr::new(&name.to_uppercase())), Ok(Some(_)));
    let _ = dir.unlink(OsStr::new(&name));
    folds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> WirePath {
        WirePath::parse(s).unwrap()
    }

    #[test]
    fn only_case_folding_filesystems_refuse_names_that_differ_by_case() {
        let mut folds = CaseNames::new(true);
        folds.check(&p("docs/README")).unwrap();
        folds.check(&p("docs/README")).unwrap(); // the same path again is no collision
        folds.check(&p("Docs/other")).unwrap(); // folders merge; no file is replaced
        let e = folds.check(&p("docs/Readme")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("differs only by case from docs/README"), "{}", e.message);
        assert!(folds.check(&p("DOCS/readme")).is_err());
        assert!(folds.check(&p("Ünïcode")).is_ok() && folds.check(&p("üNÏCODE")).is_err());
        let mut exact = CaseNames::new(false);
        exact.check(&p("README")).unwrap();
        exact.check(&p("Readme")).unwrap();
    }

    #[test]
    fn the_record_stays_bounded_and_within_its_budget() {
        let mut folds = CaseNames::new(true);
        for i in 0..20_000 {
            folds.check(&p(&format!("some/long/folder/name/file-{i:06}"))).unwrap();
        }
        assert!(folds.bytes <= MAX_BYTES);
        let budget = Budget::new(3 * CHUNK);
        let mut charged = CaseNames::new(true).charged_to(budget.clone());
        for i in 0..20_000 {
            charged.check(&p(&format!("some/long/folder/name/file-{i:06}"))).unwrap();
            assert!(charged.bytes <= 3 * CHUNK);
        }
        charged.check(&p("some/long/folder/name/FILE-019999")).unwrap_err();
        drop(charged);
        assert!(budget.try_charge(3 * CHUNK).is_some(), "everything is given back");
    }

    #[test]
    fn this_filesystem_is_probed_and_the_probe_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dir = DirFd::open_path(t.path()).unwrap();
        let folds = folds_case(&dir);
        if std::env::var_os("XFER_FAULT_CASE_INSENSITIVE").is_none() {
            assert_eq!(folds, cfg!(any(windows, target_os = "macos")), "the usual answer for this platform's temp dir");
        }
        assert!(dir.names().unwrap().is_empty());
    }
}

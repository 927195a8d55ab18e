//! One memory budget for everything a server buffers on behalf of its
//! peers: small files held in memory for their group commit, the `OFFER`s
//! of pulling clients, and small files read ahead for pulls.
//!
//! Each of those is also bounded per connection, but `--max-conns` times a
//! per-connection bound is still too much for one machine. A [`Charge`] is
//! taken before the memory is used and returned when it is dropped; when
//! the budget is spent the server does without the memory (writes the file
//! to disk now, ignores the offer, reads the file when its turn comes), so
//! a full budget slows peers down but never fails a transfer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default server-wide budget for buffered peer state (`serve --max-memory`).
pub const DEFAULT: usize = 64 << 20;

/// A shared byte budget; clones share it.
#[derive(Clone)]
pub struct Budget(Arc<Inner>);

struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// A share of another budget: a charge takes from both.
    parent: Option<Budget>,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget(Arc::new(Inner { limit, used: AtomicUsize::new(0), parent: None }))
    }

    /// A share of this budget of at most `limit` bytes (one client's, so
    /// that no client can hold all of it).
    pub fn share(&self, limit: usize) -> Budget {
        Budget(Arc::new(Inner { limit, used: AtomicUsize::new(0), parent: Some(self.clone()) }))
    }

    /// Handles on this budget besides the caller's (shares count too).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }

    /// No limit (clients, which hold only their own files).
    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    /// Takes `bytes` from the budget (and from the budget it is a share
    /// of), or `None` when that would exceed either.
    pub fn try_charge(&self, bytes: usize) -> Option<Charge> {
        self.take(bytes).then(|| Charge { budget: self.clone(), bytes })
    }

    fn take(&self, bytes: usize) -> bool {
        if let Some(parent) = &self.0.parent
            && !parent.take(bytes)
        {
            return false;
        }
        let inner = &self.0;
        let mut used = inner.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= inner.limit) else {
                if let Some(parent) = &self.0.parent {
                    parent.give(bytes);
                }
                return false;
            };
            match inner.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn give(&self, bytes: usize) {
        self.0.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(parent) = &self.0.parent {
            parent.give(bytes);
        }
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.0.limit
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Budget({} of {})", self.used(), self.limit())
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
pub struct Charge {
    budget: Budget,
    bytes: usize,
}

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows this charge by `more`, if the budget allows.
    pub fn grow(&mut self, more: usize) -> bool {
        let ok = self.budget.take(more);
        if ok {
            self.bytes += more;
        }
        ok
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Charge({})", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_limit_and_returned_on_drop() {
        let b = Budget::new(100);
        let a = b.try_charge(60).unwrap();
        assert!(b.try_charge(41).is_none());
        let mut c = b.try_charge(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(!c.grow(1));
        drop(a);
        assert!(c.grow(10));
        assert_eq!((c.bytes(), b.used()), (50, 50));
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(Budget::unlimited().try_charge(usize::MAX).is_some());
    }

    #[test]
    fn a_share_takes_from_both_and_no_more_than_its_limit() {
        let all = Budget::new(100);
        let a = all.share(60);
        let b = all.share(60);
        let x = a.try_charge(50).unwrap();
        assert!(a.try_charge(20).is_none(), "past a's share");
        assert_eq!(all.used(), 50, "a refused charge gives the parent's part back");
        let y = b.try_charge(50).unwrap();
        assert!(b.try_charge(1).is_none(), "past the whole budget");
        assert_eq!((all.used(), a.used(), b.used()), (100, 50, 50));
        drop((x, y));
        assert_eq!((all.used(), a.used(), b.used()), (0, 0, 0));
        assert_eq!(all.holders(), 2);
    }
}

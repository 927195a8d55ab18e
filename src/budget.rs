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
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget(Arc::new(Inner { limit, used: AtomicUsize::new(0) }))
    }

    /// No limit (clients, which hold only their own files).
    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX)
    }

    /// Takes `bytes` from the budget, or `None` when that would exceed it.
    pub fn try_charge(&self, bytes: usize) -> Option<Charge> {
        let inner = &self.0;
        let mut used = inner.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(bytes).filter(|n| *n <= inner.limit)?;
            match inner.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Charge { budget: self.clone(), bytes }),
                Err(now) => used = now,
            }
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
        match self.budget.try_charge(more) {
            Some(extra) => {
                self.bytes += extra.bytes;
                std::mem::forget(extra);
                true
            }
            None => false,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.0.used.fetch_sub(self.bytes, Ordering::AcqRel);
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
}

//! The invites file: pending and used invites, beside the CA key.
//!
//! `invites.json` (mode 0600) holds, per invite, its token id, name, role,
//! expiry and the verifier of its secret (see [`super::code`]), never the
//! secret. Every change happens under an exclusive lock on `.invites.lock`
//! and replaces the file through a synced temporary file and a rename, so an
//! invite is redeemed exactly once, by concurrent connections, by several
//! server processes, and across a crash or restart.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pki::Role;

/// Name of the invites file, beside `ca.key`.
pub const INVITES_FILE: &str = "invites.json";
const LOCK_FILE: &str = ".invites.lock";
/// Used and expired invites are listed this long, then forgotten.
const KEEP_SECS: i64 = 30 * 24 * 3600;

/// One invite as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invite {
    /// Token id, hex.
    pub id: String,
    pub name: String,
    /// "client" or "server".
    pub role: String,
    /// Extra names for a server certificate.
    #[serde(default)]
    pub sans: Vec<String>,
    /// Validity of the certificate issued, in days.
    pub days: u32,
    /// Unix seconds.
    pub created: i64,
    pub expires: i64,
    /// Ed25519 public key derived from the secret, hex.
    pub verifier: String,
    #[serde(default)]
    pub used: Option<Used>,
}

/// When and by whom an invite was redeemed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Used {
    pub at: i64,
    pub from: String,
}

impl Invite {
    /// The role the certificate gets.
    pub fn role(&self) -> Role {
        if self.role == "server" { Role::Server } else { Role::Client }
    }

    /// "pending", "used …" or "expired …", for listings and logs.
    pub fn state(&self, now: i64) -> String {
        match &self.used {
            Some(u) => format!("used {} from {}", date(u.at), u.from),
            None if self.expires <= now => format!("expired {}", date(self.expires)),
            None => format!("pending, expires {}", date(self.expires)),
        }
    }
}

/// What redeeming a token id came to.
#[derive(Debug)]
pub enum Redeemed {
    /// The invite, now marked used.
    Issued(Invite),
    Unknown,
    Expired(Invite),
    Used(Invite),
    /// The proof did not check (a wrong secret, or a replayed proof).
    BadProof(Invite),
}

/// The invites file of one CA.
#[derive(Debug, Clone)]
pub struct Invites {
    path: PathBuf,
    lock: PathBuf,
}

impl Invites {
    /// The invites file in `dir` (the folder of `ca.key`).
    pub fn in_dir(dir: &Path) -> Invites {
        Invites { path: dir.join(INVITES_FILE), lock: dir.join(LOCK_FILE) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Records a new invite.
    pub fn add(&self, invite: Invite) -> Result<()> {
        self.change(|all| {
            all.push(invite);
            Ok(())
        })
    }

    /// Every invite on record, oldest first (none when there is no file).
    pub fn list(&self) -> Result<Vec<Invite>> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.locked()?;
        self.read()
    }

    /// Cancels the pending invites for `name`; returns how many there were.
    pub fn cancel(&self, name: &str) -> Result<usize> {
        let mut n = 0;
        self.change(|all| {
            let now = now();
            all.retain(|i| {
                let pending = i.name == name && i.used.is_none() && i.expires > now;
                n += usize::from(pending);
                !pending
            });
            Ok(())
        })?;
        Ok(n)
    }

    /// Redeems token `id` if `proof_ok` accepts its invite: marks it used
    /// (durably, before returning) and returns it. Exactly one of any number
    /// of concurrent calls for one invite gets [`Redeemed::Issued`].
    pub fn redeem(&self, id: &str, from: &str, proof_ok: impl FnOnce(&Invite) -> bool) -> Result<Redeemed> {
        let mut outcome = Redeemed::Unknown;
        self.change(|all| {
            let now = now();
            let Some(invite) = all.iter_mut().find(|i| i.id == id) else { return Ok(()) };
            outcome = if invite.used.is_some() {
                Redeemed::Used(invite.clone())
            } else if invite.expires <= now {
                Redeemed::Expired(invite.clone())
            } else if !proof_ok(invite) {
                Redeemed::BadProof(invite.clone())
            } else {
                invite.used = Some(Used { at: now, from: from.to_owned() });
                Redeemed::Issued(invite.clone())
            };
            Ok(())
        })?;
        Ok(outcome)
    }

    /// Read, change and write back under the lock.
    fn change(&self, f: impl FnOnce(&mut Vec<Invite>) -> Result<()>) -> Result<()> {
        let _lock = self.locked()?;
        let mut all = if self.exists() { self.read()? } else { Vec::new() };
        let before = all.clone();
        f(&mut all)?;
        let cutoff = now() - KEEP_SECS;
        all.retain(|i| i.used.as_ref().map_or(i.expires, |u| u.at) > cutoff);
        if all != before || !self.exists() {
            self.write(&all)?;
        }
        Ok(())
    }

    fn read(&self) -> Result<Vec<Invite>> {
        let text =
            fs::read_to_string(&self.path).map_err(|e| Error::io(format!("cannot read {}", self.path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| Error::Identity {
            what: self.path.display().to_string(),
            message: format!("not an invites file: {e}"),
        })
    }

    fn write(&self, all: &[Invite]) -> Result<()> {
        let ctx = || format!("cannot write {}", self.path.display());
        let tmp = self.path.with_file_name(format!(".{INVITES_FILE}.tmp"));
        let text = serde_json::to_string_pretty(all).expect("invites serialize");
        let mut f = crate::platform::file_options(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(ctx(), e))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(ctx(), e))?;
        fs::rename(&tmp, &self.path).map_err(|e| Error::io(ctx(), e))?;
        // The rename itself must survive a crash: a redeemed invite that
        // comes back after a power cut could be redeemed twice.
        if let Some(dir) = self.path.parent() {
            crate::platform::sync_dir(dir).map_err(|e| Error::io(ctx(), e))?;
        }
        Ok(())
    }

    fn locked(&self) -> Result<File> {
        let ctx = || format!("cannot lock {}", self.lock.display());
        let f = crate::platform::file_options(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock)
            .map_err(|e| Error::io(ctx(), e))?;
        f.lock().map_err(|e| Error::io(ctx(), e))?;
        Ok(f)
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `2026-12-04 10:09 UTC`.
pub fn date(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix).ok().and_then(|t| t.format(&format).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(id: &str, expires_in: i64) -> Invite {
        Invite {
            id: id.into(),
            name: "runner-7".into(),
            role: "client".into(),
            sans: vec![],
            days: 365,
            created: now(),
            expires: now() + expires_in,
            verifier: String::new(),
            used: None,
        }
    }

    #[test]
    fn an_invite_is_redeemed_once_even_by_racing_threads() {
        let dir = tempfile::tempdir().unwrap();
        let invites = Invites::in_dir(dir.path());
        invites.add(invite("aa", 3600)).unwrap();
        #[cfg(unix)]
        {
            let mode = fs::metadata(invites.path()).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        }
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let invites = invites.clone();
                    s.spawn(move || matches!(invites.redeem("aa", "test", |_| true).unwrap(), Redeemed::Issued(_)))
                })
                .collect();
            handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(wins, 1);
        assert!(matches!(Invites::in_dir(dir.path()).redeem("aa", "t", |_| true).unwrap(), Redeemed::Used(_)));
    }

    #[test]
    fn unknown_expired_and_bad_proofs_are_not_redeemed_nor_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let invites = Invites::in_dir(dir.path());
        invites.add(invite("old", -1)).unwrap();
        invites.add(invite("new", 3600)).unwrap();
        assert!(matches!(invites.redeem("nope", "t", |_| true).unwrap(), Redeemed::Unknown));
        assert!(matches!(invites.redeem("old", "t", |_| true).unwrap(), Redeemed::Expired(_)));
        assert!(matches!(invites.redeem("new", "t", |_| false).unwrap(), Redeemed::BadProof(_)));
        assert!(matches!(invites.redeem("new", "t", |_| true).unwrap(), Redeemed::Issued(_)));
    }

    #[test]
    fn cancel_removes_only_pending_invites_of_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let invites = Invites::in_dir(dir.path());
        invites.add(invite("a", 3600)).unwrap();
        invites.add(invite("b", 3600)).unwrap();
        invites.redeem("b", "t", |_| true).unwrap();
        assert_eq!(invites.cancel("runner-7").unwrap(), 1);
        let left = invites.list().unwrap();
        assert_eq!(left.len(), 1);
        assert!(left[0].used.is_some());
    }
}

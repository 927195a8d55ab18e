//! `xfer keygen`: the CA, certificates by role, revocation, and invites.

use std::time::Duration;

use clap::Args;
use std::path::PathBuf;

use crate::enroll::code::{self, InviteCode};
use crate::enroll::invites::{self, Invite, Invites};
use crate::error::Error;
use crate::pki::{self, KeygenConfig};

/// `--key-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyTypeArg {
    /// ECDSA P-256 (default).
    P256,
    /// Ed25519.
    Ed25519,
}

impl From<KeyTypeArg> for pki::KeyType {
    fn from(k: KeyTypeArg) -> pki::KeyType {
        match k {
            KeyTypeArg::P256 => pki::KeyType::P256,
            KeyTypeArg::Ed25519 => pki::KeyType::Ed25519,
        }
    }
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Peers to issue: client certificates, or server certificates with
    /// --server (default: a server certificate `server` and a client
    /// certificate `client`).
    pub names: Vec<String>,
    /// Folder for the CA and certificates [default: ./certs when it exists,
    /// else the per-user folder, ~/.config/xfer/certs on Linux, where every
    /// command looks].
    #[arg(long = "dir", env = "XFER_CERTS", value_name = "DIR")]
    pub dir_arg: Option<PathBuf>,
    /// `--dir`, or where it defaults to.
    #[arg(skip)]
    pub dir: PathBuf,
    /// Issue server certificates (serverAuth; NAME, each --san and loopback
    /// names); with --renew, the role for an older dual-use certificate.
    #[arg(long, conflicts_with_all = ["client", "list", "revoke"])]
    pub server: bool,
    /// Issue client certificates (clientAuth; NAME only), the default for
    /// NAMEs; with --renew, the role for an older dual-use certificate.
    #[arg(long, conflicts_with_all = ["list", "revoke"])]
    pub client: bool,
    /// Extra DNS name or IP address for the server certificates (repeatable);
    /// with --renew, added to the names the server certificate has.
    #[arg(long = "san", value_name = "HOST_OR_IP")]
    pub sans: Vec<String>,
    /// Validity of the peer certificates, in days.
    #[arg(long, default_value_t = pki::PEER_DAYS)]
    pub days: u32,
    /// Validity of the CA, in days, when this run creates it.
    #[arg(long, default_value_t = pki::CA_DAYS)]
    pub ca_days: u32,
    /// Kind of keys to generate.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::P256)]
    pub key_type: KeyTypeArg,
    /// Overwrite existing peer files.
    #[arg(long)]
    pub force: bool,
    /// List the certificates in --dir (names, fingerprints, expiry) instead.
    #[arg(long, conflicts_with_all = ["names", "sans", "force", "revoke"])]
    pub list: bool,
    /// Revoke peer NAME: add its certificate to DIR/ca.crl, signed by the CA.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["names", "sans", "force", "renew"])]
    pub revoke: Option<String>,
    /// Re-issue peer NAME with the same names, valid --days from now.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["names", "force", "list"])]
    pub renew: Option<String>,
    /// With --renew: keep the existing private key.
    #[arg(long, requires = "renew")]
    pub keep_key: bool,
    /// Print a one-time code with which a new machine gets a certificate
    /// for NAME (`xfer enroll`), its key never leaving it; a client
    /// certificate unless --server.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["names", "force", "list", "revoke", "renew", "client"])]
    pub invite: Option<String>,
    /// With --invite: how long the code may be used.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::parse_duration, requires = "invite")]
    pub ttl: Duration,
    /// Cancel the pending invites for NAME.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["names", "sans", "force", "list", "revoke", "renew", "invite"])]
    pub revoke_invite: Option<String>,
}

/// `xfer keygen`.
pub(super) fn keygen(mut a: KeygenArgs) -> anyhow::Result<()> {
    a.dir = match a.dir_arg.clone() {
        Some(dir) => dir,
        None => super::config::default_certs_checked()?,
    };
    if a.list {
        return list_certs(&a.dir);
    }
    if let Some(name) = &a.invite {
        return invite(&a, name);
    }
    if let Some(name) = &a.revoke_invite {
        pki::check_name(name)?;
        let invites = Invites::in_dir(&a.dir);
        return match invites.cancel(name)? {
            0 => Err(Error::Usage(format!("no pending invite for {name} in {}", invites.path().display())).into()),
            n => {
                println!("cancelled {n} pending invite(s) for {name}");
                Ok(())
            }
        };
    }
    if let Some(name) = &a.revoke {
        let r = pki::revoke(&a.dir, name)?;
        if !r.serials.is_empty() {
            println!("{name}: revoked {} certificate(s), serial {}", r.serials.len(), r.serials.join(", "));
        }
        if r.already > 0 {
            println!("{name}: {} certificate(s) were already revoked", r.already);
        }
        println!("{} now lists {} certificate(s)", r.crl.display(), r.entries);
        println!("servers and clients that use {} refuse it from their next start or SIGHUP", r.crl.display());
        return Ok(());
    }
    let key_type = a.key_type.into();
    let role = match (a.server, a.client) {
        (true, _) => Some(pki::Role::Server),
        (_, true) => Some(pki::Role::Client),
        _ => None,
    };
    if let Some(name) = &a.renew {
        let cfg = pki::RenewConfig { days: a.days, keep_key: a.keep_key, key_type, role, add_sans: a.sans.clone() };
        print_written(pki::renew(&a.dir, name, cfg)?);
        return Ok(());
    }
    let peers = match role {
        _ if a.names.is_empty() && role.is_none() => {
            vec![pki::PeerSpec::server("server"), pki::PeerSpec::client("client")]
        }
        Some(pki::Role::Server) if a.names.is_empty() => vec![pki::PeerSpec::server("server")],
        Some(pki::Role::Client) if a.names.is_empty() => vec![pki::PeerSpec::client("client")],
        Some(pki::Role::Server) => a.names.iter().map(|n| pki::PeerSpec::server(n)).collect(),
        _ => a.names.iter().map(|n| pki::PeerSpec::client(n)).collect(),
    };
    if !a.sans.is_empty() && role != Some(pki::Role::Server) && !a.names.is_empty() {
        return Err(Error::Usage(format!(
            "--san applies to server certificates only, and {} would be client certificates: \
             add --server to issue server certificates (`xfer keygen --server {} --san {}`)",
            a.names.join(", "),
            a.names.join(" "),
            a.sans.join(" --san ")
        ))
        .into());
    }
    let cfg = KeygenConfig {
        sans: a.sans,
        days: a.days,
        ca_days: a.ca_days,
        key_type,
        force: a.force,
        ..KeygenConfig::new(a.dir, peers)
    };
    let ca = cfg.dir.join("ca.pem");
    let reusing = ca.exists();
    let written = pki::keygen(&cfg)?;
    if reusing {
        println!("signing with the existing CA in {}", ca.display());
    }
    print_written(written);
    Ok(())
}

/// One line per file keygen wrote, with each certificate's fingerprint.
fn print_written(written: Vec<pki::Written>) {
    for w in written {
        match w.cert {
            Some(c) => println!(
                "wrote {}  {} ({})  sha256 {}  expires {}",
                w.path.display(),
                c.subject,
                c.role.map_or("CA", pki::Role::as_str),
                c.sha256,
                c.not_after.date()
            ),
            None => println!("wrote {}  ({})", w.path.display(), w.note),
        }
    }
}

/// `xfer keygen --invite NAME`: records the invite, prints its code.
fn invite(a: &KeygenArgs, name: &str) -> anyhow::Result<()> {
    pki::check_name(name)?;
    let role = if a.server { pki::Role::Server } else { pki::Role::Client };
    if !a.sans.is_empty() && role == pki::Role::Client {
        return Err(Error::Usage(format!(
            "--san applies to server certificates only: add --server (`xfer keygen --invite {name} --server --san {}`)",
            a.sans.join(" --san ")
        ))
        .into());
    }
    if a.ttl.is_zero() || a.days == 0 {
        return Err(Error::Usage("--ttl and --days must be more than zero".into()).into());
    }
    // The CA must be the one that will sign: its key is here.
    let ca = pki::Ca::load(&a.dir).map_err(|e| {
        Error::Usage(format!(
            "{e}\nan invite needs the CA of this folder: create it first with `xfer keygen --dir {}`",
            a.dir.display()
        ))
    })?;
    let code = InviteCode::generate(name, &ca.certs()[0]);
    let now = invites::now();
    let expires = now.saturating_add(i64::try_from(a.ttl.as_secs()).unwrap_or(i64::MAX).max(1));
    let invite = Invite {
        id: code::hex(&code.token_id),
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        sans: a.sans.clone(),
        days: a.days,
        created: now,
        expires,
        verifier: code::hex(&code.verifier()),
        used: None,
    };
    Invites::in_dir(&a.dir).add(invite)?;
    println!("{}", code.reveal());
    eprintln!(
        "one-time code for {name} ({} certificate), valid until {}: on the new machine run \
         `xfer enroll HOST:PORT -` and paste it (or give it as CODE, or in $XFER_INVITE), \
         against `xfer serve --enroll --certs {}` on this one",
        role.as_str(),
        invites::date(expires),
        a.dir.display()
    );
    Ok(())
}

/// `xfer keygen --list`.
fn list_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    for c in pki::list(dir)? {
        let names = if c.names.is_empty() { String::new() } else { format!("  names {}", c.names.join(",")) };
        println!(
            "{}  {} ({}){names}  sha256 {}  expires {}",
            c.source,
            c.subject,
            c.role.as_str(),
            c.sha256,
            c.not_after.date()
        );
        for w in [c.role_warning(), c.expiry_warning()].into_iter().flatten() {
            println!("  warning: {w}");
        }
    }
    let now = invites::now();
    for i in Invites::in_dir(dir).list()? {
        println!("invite {} ({})  token {}  {}", i.name, i.role, i.id, i.state(now));
    }
    Ok(())
}

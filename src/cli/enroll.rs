//! `xfer enroll` and `xfer renew`.

use std::path::PathBuf;

use clap::Args;

use super::IdentityArgs;
use super::config::{self, resolve_host};
use super::keygen::KeyTypeArg;
use crate::enroll::client::{self, EnrollConfig, Outcome, RenewConfig};
use crate::enroll::code::InviteCode;
use crate::error::Error;
use crate::pki::CertRole;

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Server started with `xfer serve --enroll`, as HOST or HOST:PORT.
    pub host: String,
    /// The code `xfer keygen --invite` printed; `-` reads it from standard
    /// input, and without it $XFER_INVITE is used (neither shows in `ps`).
    #[arg(env = "XFER_INVITE", hide_env_values = true)]
    pub code: String,
    /// Folder to write ca.pem, NAME.pem and NAME.key to [default: ./certs
    /// when it exists, else the per-user folder, ~/.config/xfer/certs on
    /// Linux, where every command looks].
    #[arg(long, env = "XFER_CERTS", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Replace existing files for this name (and a ca.pem of another CA).
    #[arg(long)]
    pub force: bool,
    /// Kind of key to generate.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::P256)]
    pub key_type: KeyTypeArg,
    /// The name the server's certificate must carry, if not HOST.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Server started with `xfer serve --enroll`, as HOST or HOST:PORT.
    pub host: String,
    /// Keep the current private key (default: a new one).
    #[arg(long)]
    pub keep_key: bool,
    /// Ask the CA to revoke the certificate being replaced.
    #[arg(long)]
    pub revoke_old: bool,
    /// Kind of key to generate.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::P256)]
    pub key_type: KeyTypeArg,
    /// The name the server's certificate must carry, if not HOST.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

pub(super) async fn enroll(a: EnrollArgs) -> anyhow::Result<()> {
    let text = if a.code == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| Error::io("cannot read the code", e))?;
        line
    } else {
        a.code.clone()
    };
    let code = InviteCode::parse(&text)?;
    let target = resolve_host(&a.host)?;
    let alias = target.alias.as_ref();
    let alias_certs = alias.and_then(|x| x.certs.clone());
    // Where later commands look without being told needs no --certs in the hint.
    let found_anyway = a.dir.is_none() || a.dir == alias_certs || a.dir == Some(config::default_certs());
    let dir = match a.dir.or(alias_certs) {
        Some(dir) => dir,
        None => config::default_certs_checked()?,
    };
    let certs_flag = if found_anyway { String::new() } else { format!(" --certs {}", dir.display()) };
    let cfg = EnrollConfig {
        target: target.address.clone(),
        server_name: a.server_name.or_else(|| alias.and_then(|x| x.server_name.clone())),
        code,
        dir,
        force: a.force,
        key_type: a.key_type.into(),
    };
    let done = client::enroll(cfg).await?;
    print_outcome(&done);
    let next = match done.role {
        CertRole::Server => format!("xfer serve{certs_flag} --name {}", done.name),
        _ => format!("xfer push {} FILES{certs_flag} --name {}", a.host, done.name),
    };
    println!(
        "enrolled as {} ({} certificate, expires {}); next: {next}",
        done.name,
        done.role.as_str(),
        done.not_after.date()
    );
    Ok(())
}

pub(super) async fn renew(a: RenewArgs) -> anyhow::Result<()> {
    let target = resolve_host(&a.host)?;
    let alias = target.alias.as_ref();
    let cfg = RenewConfig {
        server_name: a.server_name.or_else(|| alias.and_then(|x| x.server_name.clone())),
        identity: a.identity.paths("client", alias)?,
        target: target.address,
        keep_key: a.keep_key,
        revoke_old: a.revoke_old,
        key_type: a.key_type.into(),
    };
    let done = client::renew(cfg).await?;
    print_outcome(&done);
    println!(
        "renewed {} ({} certificate, expires {}){}",
        done.name,
        done.role.as_str(),
        done.not_after.date(),
        if done.role == CertRole::Server { "; send the server SIGHUP to use it" } else { "" }
    );
    Ok(())
}

fn print_outcome(done: &Outcome) {
    for path in &done.written {
        let note = if path.extension().is_some_and(|x| x == "key") { "  (private key, mode 0600)" } else { "" };
        println!("wrote {}{note}", path.display());
    }
}

//! Who a peer is and which CA it trusts: the identity flags every command
//! that connects shares, and PEM text taken safely from the environment.

use std::path::PathBuf;

use clap::Args;
use clap::builder::TypedValueParser;

use super::config::{self, HostAlias};
use crate::error::Error;
use crate::tls::{Crl, IdentityPaths, Pem};

/// Who this peer is and which CA it trusts.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Folder holding ca.pem, NAME.pem and NAME.key [default: ./certs when
    /// it exists, else the per-user folder, ~/.config/xfer/certs on Linux].
    #[arg(long, env = "XFER_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Which identity in --certs to use [default: server for serve, client otherwise].
    #[arg(long, env = "XFER_NAME")]
    pub name: Option<String>,
    /// Certificate file (overrides --certs/--name); $XFER_CERT may hold the PEM text itself.
    #[arg(long, env = "XFER_CERT", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub cert: Option<PathBuf>,
    /// Private key file (overrides --certs/--name); $XFER_KEY may hold the PEM text itself.
    #[arg(long, env = "XFER_KEY", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub key: Option<PathBuf>,
    /// CA certificate file (overrides --certs); $XFER_CA may hold the PEM text itself.
    #[arg(long, env = "XFER_CA", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub ca: Option<PathBuf>,
    /// Revocation list to refuse revoked peers [default: DIR/ca.crl when it exists].
    #[arg(long, env = "XFER_CRL", value_name = "FILE", hide_env_values = true, value_parser = any_path())]
    pub crl: Option<PathBuf>,
    /// Refuse a private key file that other users can read (default: warn).
    #[arg(long)]
    pub strict: bool,
}

impl IdentityArgs {
    /// The identity's files: flags and their variables first, then what a
    /// host alias of the config file says, then the defaults.
    pub(crate) fn paths(&self, default_name: &str, alias: Option<&HostAlias>) -> Result<IdentityPaths, Error> {
        let alias_certs = alias.and_then(|a| a.certs.clone());
        let dir = match self.certs.clone().or(alias_certs) {
            Some(dir) => dir,
            None => config::default_certs_checked()?,
        };
        let name = self.name.as_deref().or(alias.and_then(|a| a.name.as_deref())).unwrap_or(default_name);
        let base = IdentityPaths::in_dir(&dir, name);
        if !dir.exists() && (self.cert.is_none() || self.key.is_none() || self.ca.is_none()) {
            let looked = match (&self.certs, alias.and_then(|a| a.certs.as_ref())) {
                (Some(_), _) | (_, Some(_)) => format!("{} does not exist", dir.display()),
                (None, None) => format!("none in {} (nor --certs or $XFER_CERTS)", config::certs_lookup_words()),
            };
            return Err(Error::Identity {
                what: "certificates".into(),
                message: format!(
                    "{looked}; run `xfer keygen` (or `xfer enroll HOST CODE`) to create them, or pass --certs DIR"
                ),
            });
        }
        Ok(IdentityPaths {
            cert: pem_arg(self.cert.as_ref(), "XFER_CERT", base.cert)?,
            key: pem_arg(self.key.as_ref(), "XFER_KEY", base.key)?,
            ca: pem_arg(self.ca.as_ref(), "XFER_CA", base.ca)?,
            crl: match (&self.crl, &self.ca) {
                (Some(path), _) => Some(Crl { path: path.clone(), required: true }),
                // Beside the CA actually in use, when it is a file.
                (None, Some(ca)) if !ca.to_string_lossy().trim_start().starts_with("-----BEGIN") => {
                    Some(Crl { path: ca.with_file_name("ca.crl"), required: false })
                }
                (None, _) => base.crl,
            },
            strict: self.strict,
        })
    }
}

/// Paths as typed, the empty one included (so an empty `$XFER_KEY` is
/// reported by [`pem_arg`] in words, not as a clap error).
fn any_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// A file path, or, when the value is PEM text, that text; but PEM text is
/// accepted only from the environment variable `var`: on the command line
/// every user of the machine could read it (`ps`). A value that may be a
/// secret is never repeated in a message, however malformed it is.
fn pem_arg(value: Option<&PathBuf>, var: &'static str, default: Pem) -> Result<Pem, Error> {
    let Some(value) = value else { return Ok(default) };
    let text = value.to_string_lossy();
    let from_env = std::env::var_os(var).is_some_and(|env| env == value.as_os_str());
    let flag = var.trim_start_matches("XFER_").to_ascii_lowercase();
    if text.trim().is_empty() {
        return Err(Error::Usage(if from_env {
            format!(
                "{var} is set but empty (CI systems give secrets no value in jobs that may not see them, such as \
                 pull requests from forks): set it to the PEM text or a file's path, or unset it"
            )
        } else {
            format!("--{flag} is empty: give a file's path")
        }));
    }
    // Anything with PEM armour, several lines or the length of a key is
    // text, not a file name (a file name is printed in errors; a key must
    // never be).
    // From the environment, a value naming no file is taken as (broken)
    // text too: it may be a key without its armour.
    let looks_like_text = text.contains("-----")
        || text.contains('\n')
        || text.len() > 1024
        || (from_env && std::fs::symlink_metadata(value).is_err());
    match (looks_like_text, from_env) {
        (false, _) => Ok(Pem::File(value.clone())),
        (true, true) => Ok(Pem::Env { var, text: text.into_owned() }),
        (true, false) => Err(Error::Usage(format!(
            "--{flag} holds PEM text, which on the command line is readable by every user of this machine: \
             pass it in ${var} instead"
        ))),
    }
}

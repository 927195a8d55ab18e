//! TLS set-up: identities from PEM files, rustls configs for both sides, the
//! peer's name from its verified certificate, and handshake failures turned
//! into sentences a user can act on.
//!
//! Only TLS 1.3 with the aws-lc-rs provider is ever configured, both sides
//! always authenticate against the CA, and there is no way to turn either
//! off: `allow_unauthenticated()` is never called.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::error::{Error, Result};
use crate::pki::{CertInfo, CertRole, Role};
use crate::protocol::ALPN;
use crate::text::Safe;

mod explain;
mod verify;

pub use explain::{explain_for_client, explain_for_server, not_xfer};
pub use verify::WrongRole;
use verify::{NamingClientVerifier, RoleNamingServerVerifier};

/// Where an identity's three PEM items come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPaths {
    /// This peer's certificate (chain).
    pub cert: Pem,
    /// This peer's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: Pem,
    /// The CA certificate(s) the other side must chain to.
    pub ca: Pem,
    /// Revoked certificates (a CRL signed by the CA), if any.
    pub crl: Option<Crl>,
    /// Refuse (rather than warn about) a private key file that other users
    /// can read.
    pub strict: bool,
}

/// Where a certificate revocation list is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub path: PathBuf,
    /// False for the default `ca.crl` beside `ca.pem`, which may not exist.
    pub required: bool,
}

impl IdentityPaths {
    /// The files `xfer keygen` writes for NAME in DIR.
    pub fn in_dir(dir: &Path, name: &str) -> IdentityPaths {
        IdentityPaths {
            cert: Pem::File(dir.join(format!("{name}.pem"))),
            key: Pem::File(dir.join(format!("{name}.key"))),
            ca: Pem::File(dir.join("ca.pem")),
            crl: Some(Crl { path: dir.join("ca.crl"), required: false }),
            strict: false,
        }
    }
}

/// One PEM item: a file, or the text of an environment variable (how CI
/// systems hand over secrets, without writing them to disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Env { var: &'static str, text: String },
}

impl fmt::Display for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "{}", p.display()),
            Pem::Env { var, .. } => write!(f, "${var}"),
        }
    }
}

impl Pem {
    fn certs(&self) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
        let certs = match self {
            Pem::File(p) => CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}; {KEYGEN_HINT}", pem_error(e)))?
                .collect::<std::result::Result<Vec<_>, _>>(),
            Pem::Env { text, .. } => CertificateDer::pem_slice_iter(text.as_bytes()).collect(),
        }
        .map_err(pem_error)?;
        if certs.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        Ok(certs)
    }

    fn key(&self) -> std::result::Result<PrivateKeyDer<'static>, String> {
        match self {
            Pem::File(p) => PrivateKeyDer::from_pem_file(p),
            Pem::Env { text, .. } => PrivateKeyDer::from_pem_slice(text.as_bytes()),
        }
        .map_err(|e| match (self, e) {
            (Pem::Env { .. }, rustls_pki_types::pem::Error::NoItemsFound) => {
                format!("it holds neither a PEM private key nor the path of an existing file; {KEYGEN_HINT}")
            }
            (_, e) => format!("{}; {KEYGEN_HINT}", pem_error(e)),
        })
    }
}

/// A loaded identity: what a peer presents and what it trusts.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
    /// Revocation lists to check peers against.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub paths: IdentityPaths,
    /// What this identity's own certificate may be used for.
    pub role: CertRole,
}

const KEYGEN_HINT: &str =
    "run `xfer keygen` to create certificates, or point --certs/--cert/--key/--ca at existing ones";

impl Identity {
    /// Reads and checks the three items.
    pub fn load(paths: &IdentityPaths) -> Result<Identity> {
        let bad = |pem: &Pem, message: String| Error::Identity { what: pem.to_string(), message };
        let chain = paths.cert.certs().map_err(|m| bad(&paths.cert, m))?;
        check_key_mode(&paths.key, paths.strict)?;
        let key = paths.key.key().map_err(|m| bad(&paths.key, m))?;
        let cas = paths.ca.certs().map_err(|m| bad(&paths.ca, m))?;
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots.add(ca.clone()).map_err(|e| bad(&paths.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let crls = match &paths.crl {
            Some(crl) if crl.required || crl.path.exists() => {
                let what = crl.path.display().to_string();
                let crls = CertificateRevocationListDer::pem_file_iter(&crl.path)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| Error::Identity { what: what.clone(), message: pem_error(e) })?;
                if crls.is_empty() {
                    // Accepting it would silently revoke nothing.
                    return Err(Error::Identity { what, message: "no X509 CRL in it".into() });
                }
                crls
            }
            _ => Vec::new(),
        };
        // Warn early about certificates that are about to stop working.
        for (pem, der) in std::iter::once((&paths.cert, &chain[0])).chain(cas.iter().map(|c| (&paths.ca, c))) {
            if let Some(w) = CertInfo::from_der(pem.to_string(), der).ok().and_then(|i| i.expiry_warning()) {
                warn_once(w);
            }
        }
        check_crl_issuers(&crls, &cas, paths)?;
        let own = CertInfo::from_der(paths.cert.to_string(), &chain[0])?;
        if let Some(w) = own.role_warning() {
            warn_once(w);
        }
        Ok(Identity { chain, key, roots: Arc::new(roots), crls, paths: paths.clone(), role: own.role })
    }

    /// Refuses a certificate outside its validity: a server started with one
    /// would fail every client's handshake, so it must not start at all.
    pub fn check_valid_now(&self) -> Result<()> {
        let info = CertInfo::from_der(self.paths.cert.to_string(), &self.chain[0])?;
        let now = time::OffsetDateTime::now_utc();
        let message = if info.not_after < now {
            format!(
                "the certificate expired on {} (it is now {}): renew it with `xfer keygen --renew {}` on the CA's machine",
                info.not_after, now, info.subject
            )
        } else if info.not_before > now {
            format!(
                "the certificate is not valid until {} (it is now {}): check this machine's clock",
                info.not_before, now
            )
        } else {
            return Ok(());
        };
        Err(Error::Identity { what: self.paths.cert.to_string(), message })
    }

    /// Warns when this identity's certificate may not act in `role`: the
    /// other side will refuse it, and the warning says why before that.
    fn check_role(&self, role: Role) {
        if !self.role.allows(role) {
            let fix = match role {
                Role::Server => "issue one with `xfer keygen --server NAME --san HOST`",
                Role::Client => "issue one with `xfer keygen NAME`",
            };
            warn_once(format!(
                "{} is a {} certificate, not a {} certificate: peers will refuse it; {fix}",
                self.paths.cert,
                self.role.as_str(),
                role.as_str()
            ));
        }
    }

    /// True when `der` is one of the CA certificates this identity trusts.
    pub fn roots_contain(&self, der: &CertificateDer<'_>) -> bool {
        self.paths.ca.certs().is_ok_and(|cas| cas.iter().any(|c| c.as_ref() == der.as_ref()))
    }

    /// The server side: TLS 1.3 only, client certificates required and
    /// verified against the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        self.check_role(Role::Server);
        let provider = provider();
        let inner = self.client_verifier()?;
        let verifier = Arc::new(NamingClientVerifier { inner, ca: self.paths.ca.to_string() });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.ca_error(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.key_error(e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// How a server checks client certificates: WebPKI against the CA and
    /// CRLs. Also used to re-check open sessions after a reload.
    pub fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone())
            // A CRL from one CA of a bundle says nothing about the others'
            // peers; without this, rotating to a new CA refuses them all.
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| self.ca_error(e))?;
        Ok(verifier)
    }

    /// The client side: TLS 1.3 only, the server verified against the CA
    /// (and its name against HOST), this identity presented.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        self.check_role(Role::Client);
        self.client_config_for(ALPN)
    }

    /// A client config for the enrollment exchange (`xfer renew`): this
    /// identity presented whatever its role, since a server renews its own
    /// certificate this way too.
    pub fn renew_config(&self) -> Result<Arc<ClientConfig>> {
        self.client_config_for(crate::protocol::enroll::ENROLL_ALPN)
    }

    fn client_config_for(&self, alpn: &[u8]) -> Result<Arc<ClientConfig>> {
        let provider = provider();
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
            .with_crls(self.crls.clone())
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| self.ca_error(e))?;
        let verifier = Arc::new(RoleNamingServerVerifier { inner });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.ca_error(e))?
            .dangerous()
            // Not a weaker check: WebPKI's own verifier, whose refusals of a
            // certificate with the wrong role are made to name that role.
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.key_error(e))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    fn ca_error(&self, e: impl std::fmt::Display) -> Error {
        Error::Identity { what: self.paths.ca.to_string(), message: e.to_string() }
    }

    fn key_error(&self, e: rustls::Error) -> Error {
        Error::Identity { what: self.paths.key.to_string(), message: format!("does not fit {}: {e}", self.paths.cert) }
    }
}

fn check_crl_issuers(
    crls: &[CertificateRevocationListDer<'_>],
    cas: &[CertificateDer<'_>],
    paths: &IdentityPaths,
) -> Result<()> {
    let subjects: Vec<Vec<u8>> = cas
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c).ok().map(|(_, c)| c.subject().as_raw().to_vec()))
        .collect();
    let what = || paths.crl.as_ref().map(|c| c.path.display().to_string()).unwrap_or_default();
    for crl in crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| Error::Identity { what: what(), message: format!("not a readable CRL: {e}") })?;
        if !subjects.iter().any(|s| s.as_slice() == parsed.issuer().as_raw()) {
            return Err(Error::Identity {
                what: what(),
                message: format!(
                    "it was signed by '{}', not by the CA in {}: it would revoke nothing; use the ca.crl made by `xfer keygen --revoke` with this CA",
                    Safe(&parsed.issuer().to_string()),
                    paths.ca
                ),
            });
        }
    }
    Ok(())
}

/// Logs a warning once per process: a client retrying, or a server
/// reloading, loads the same files again and has nothing new to say.
fn warn_once(message: String) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.get_or_insert_with(HashSet::new).insert(message.clone()) {
        tracing::warn!("{message}");
    }
}

/// Warns (or with `strict`, fails) when a private key file can be read by
/// users other than its owner.
fn check_key_mode(key: &Pem, strict: bool) -> Result<()> {
    let Pem::File(path) = key else { return Ok(()) };
    // Unreadable: reported when read. No modes (Windows): nothing to check.
    let Some(mode) = crate::platform::mode_of(path) else { return Ok(()) };
    let mode = mode & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let msg = format!(
        "private key {} is readable by other users (mode {mode:04o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    );
    if strict {
        return Err(Error::Identity {
            what: path.display().to_string(),
            message: format!("{msg} (refused: --strict)"),
        });
    }
    tracing::warn!("{msg}");
    Ok(())
}

/// A certificate time as an ISO 8601 instant (UTC).
pub(super) fn date(t: &UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    crate::progress::iso8601(crate::protocol::Timestamp { secs, nanos: 0 })
}

/// `subject (issued by issuer)` of a certificate, for logs; escaped and
/// cut short, since anyone can put anything in a subject, of any length,
/// even without the CA's signature.
pub(super) fn describe_cert(der: &CertificateDer<'_>) -> String {
    let short = |s: String| -> String {
        let s = Safe(&s).to_string();
        match s.char_indices().nth(120) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        }
    };
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => format!("'{}' issued by '{}'", short(c.subject().to_string()), short(c.issuer().to_string())),
        Err(_) => "(unparseable certificate)".to_owned(),
    }
}

/// Logs why a peer that is not (yet) authenticated was refused. Anyone who
/// can reach the port can cause these, so at most 10 lines a second are
/// written, then one line counting those left out.
pub fn preauth_warn(line: fmt::Arguments<'_>) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    const PER_SECOND: u32 = 10;
    static WINDOW: Mutex<Option<(Instant, u32, u64)>> = Mutex::new(None);
    let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let (start, logged, dropped) = w.get_or_insert((Instant::now(), 0, 0));
    if start.elapsed() >= Duration::from_secs(1) {
        if *dropped > 0 {
            tracing::warn!("{dropped} more refusals of unauthenticated peers were not logged (rate limit)");
        }
        (*start, *logged, *dropped) = (Instant::now(), 0, 0);
    }
    if *logged < PER_SECOND {
        *logged += 1;
        tracing::warn!("{line}");
    } else {
        *dropped += 1;
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What is wrong with a PEM item, in words that never quote it: the item
/// may be a private key, and the parser's errors carry its bytes.
fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM item of the expected kind in it".into(),
        E::MissingSectionEnd { .. } => "not valid PEM: a section has no END line (cut short?)".into(),
        E::IllegalSectionStart { .. } => "not valid PEM: a malformed BEGIN line".into(),
        E::Base64Decode(_) => "not valid PEM: the text between BEGIN and END is not valid base64".into(),
        _ => "not valid PEM".into(),
    }
}

/// The names a certificate gives its holder: the subject's common name(s)
/// first, then DNS subject alternative names. Used to identify a verified
/// peer, so only call it on a certificate rustls has already verified.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned)).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = gn {
                // `localhost`, which keygen puts in every certificate so
                // loopback works, names no one in particular.
                if !names.iter().any(|n| n == dns) && !dns.eq_ignore_ascii_case("localhost") {
                    names.push((*dns).to_owned());
                }
            }
        }
    }
    names
}

/// Finds the rustls error inside an I/O error from tokio-rustls, if any.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

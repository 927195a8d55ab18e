//! `xfer keygen`: a local CA and the peer certificates it signs.
//!
//! Everything is generated in memory first and written only once every
//! target is known to be free (or `--force` was given), so a refused run
//! writes nothing at all. Private keys are created with mode 0600. This module
//! reports what it wrote; printing is the CLI's job.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

mod ca;
mod crl;
mod info;

pub use ca::Ca;

use crl::serial_of;
pub use crl::{ISSUED_DIR, Revocation, issued_files, revoke};
pub use info::{CertInfo, CertRole, EXPIRY_WARNING_DAYS, fingerprint, list};

/// Validity of a CA created by keygen.
pub const CA_DAYS: u32 = 3650;
/// Default validity of a peer certificate.
pub const PEER_DAYS: u32 = 365;
/// Names every server certificate carries besides its own, so loopback works.
pub const LOOPBACK_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What a peer certificate may be used for. keygen gives each certificate
/// exactly one role, so a runner's key (a CI secret) can never act as the
/// server its clients trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Extended key usage serverAuth; names: NAME, each `--san`, loopback.
    Server,
    /// Extended key usage clientAuth; names: NAME only.
    Client,
}

impl Role {
    /// "server" or "client".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// One certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub role: Role,
}

impl PeerSpec {
    pub fn server(name: &str) -> PeerSpec {
        PeerSpec { name: name.to_owned(), role: Role::Server }
    }
    pub fn client(name: &str) -> PeerSpec {
        PeerSpec { name: name.to_owned(), role: Role::Client }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct KeygenConfig {
    pub dir: PathBuf,
    /// Peers to issue; each gets NAME.pem and NAME.key.
    pub peers: Vec<PeerSpec>,
    /// Extra subject alternative names (DNS names or IP addresses) for the
    /// server certificates of this run.
    pub sans: Vec<String>,
    pub days: u32,
    /// Validity of a CA created by this run.
    pub ca_days: u32,
    pub key_type: KeyType,
    pub force: bool,
}

impl KeygenConfig {
    /// `peers` in `dir`, with the default validity and key type.
    pub fn new(dir: PathBuf, peers: Vec<PeerSpec>) -> KeygenConfig {
        KeygenConfig {
            dir,
            peers,
            sans: Vec::new(),
            days: PEER_DAYS,
            ca_days: CA_DAYS,
            key_type: KeyType::P256,
            force: false,
        }
    }

    /// What `xfer keygen` with no name makes: a server certificate
    /// `server` and a client certificate `client`.
    pub fn pair(dir: PathBuf) -> KeygenConfig {
        KeygenConfig::new(dir, vec![PeerSpec::server("server"), PeerSpec::client("client")])
    }
}

/// The kinds of key keygen makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: the default, accepted everywhere.
    #[default]
    P256,
    /// Ed25519: smaller and faster; needs TLS peers that support it.
    Ed25519,
}

impl KeyType {
    /// A new key pair of this kind.
    pub fn generate(self) -> Result<KeyPair> {
        match self {
            KeyType::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_error),
            // PKCS#8 v1: the v2 form (with the public key inside) that
            // rcgen would write is one OpenSSL 3.0 cannot read.
            KeyType::Ed25519 => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let v1 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(|_| Error::Identity {
                    what: "key".into(),
                    message: "cannot generate an Ed25519 key".into(),
                })?;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from(v1.as_ref());
                KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).map_err(gen_error)
            }
        }
    }
}

const PRIVATE_KEY: &str = "private key, mode 0600";

/// One file keygen wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    /// What it is, when not a certificate.
    pub note: &'static str,
    /// For certificates: who it is for, fingerprint and expiry.
    pub cert: Option<CertSummary>,
}

/// What a user needs to recognise a certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub subject: String,
    /// None for the CA.
    pub role: Option<Role>,
    /// SHA-256 of the DER, as colon-separated upper-case hex.
    pub sha256: String,
    pub not_after: OffsetDateTime,
}

/// Generates the CA (when missing) and each peer, then writes them.
pub fn keygen(cfg: &KeygenConfig) -> Result<Vec<Written>> {
    for p in &cfg.peers {
        check_name(&p.name)?;
    }
    if !cfg.sans.is_empty() && !cfg.peers.iter().any(|p| p.role == Role::Server) {
        return Err(Error::Usage(
            "--san applies to server certificates only: add --server to issue server certificates".into(),
        ));
    }
    if cfg.days == 0 {
        return Err(Error::Usage("--days must be at least 1".into()));
    }
    let ca_pem = cfg.dir.join("ca.pem");
    let ca_key = cfg.dir.join("ca.key");
    let mut files: Vec<(PathBuf, String, Option<CertSummary>)> = Vec::new();

    let issuer = if ca_pem.exists() {
        load_ca(&ca_pem, &ca_key)?
    } else {
        if ca_key.exists() && !cfg.force {
            return Err(refuse_overwrite(&[ca_key]));
        }
        let key = cfg.key_type.generate()?;
        let params = ca_params(&key, cfg.ca_days)?;
        let cert = params.self_signed(&key).map_err(gen_error)?;
        let subject = ca_subject(&params);
        files.push((ca_pem.clone(), cert.pem(), Some(summary(subject, None, &params, cert.der()))));
        files.push((ca_key.clone(), key.serialize_pem(), None));
        Issuer::new(params, key)
    };

    for PeerSpec { name, role } in &cfg.peers {
        let key = cfg.key_type.generate()?;
        let params = peer_params(name, *role, &cfg.sans, cfg.days)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_error)?;
        let sum = summary(name.clone(), Some(*role), &params, cert.der());
        files.push((cfg.dir.join(format!("{name}.pem")), cert.pem(), Some(sum)));
        files.push((cfg.dir.join(format!("{name}.key")), key.serialize_pem(), None));
    }

    if !cfg.force {
        let taken: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).filter(|p| p.exists()).collect();
        if !taken.is_empty() {
            return Err(refuse_overwrite(&taken));
        }
    }
    create_private_dir(&cfg.dir)?;
    let mut written = Vec::new();
    for (path, pem, cert) in files {
        write_pem(&path, &pem, cert.is_none())?;
        let note = if cert.is_some() { "" } else { PRIVATE_KEY };
        written.push(Written { path, cert, note });
    }
    Ok(written)
}

/// Names become file names and DNS names, so keep them to a safe alphabet.
/// Creates a folder for keys, and any missing parent, readable by this
/// user only (an existing folder keeps its mode: it is the user's choice).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    crate::platform::private_dir_builder()
        .recursive(true)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))
}

pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name != "ca"
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid peer name '{name}': use 1-63 letters, digits, '-', '.' or '_', not starting with '.' or '-', and not 'ca'"
        )))
    }
}

fn refuse_overwrite(taken: &[PathBuf]) -> Error {
    let list: Vec<String> = taken.iter().map(|p| p.display().to_string()).collect();
    Error::Usage(format!(
        "refusing to overwrite {}: nothing was written; pass --force to replace, or choose another --dir or name",
        list.join(", ")
    ))
}

fn gen_error(e: rcgen::Error) -> Error {
    Error::io("certificate generation failed", std::io::Error::other(e.to_string()))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    bytes[0] &= 0x7f; // keep the DER INTEGER positive
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack absorbs clock skew between the two machines.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days.into());
}

fn ca_params(key: &KeyPair, days: u32) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    // A per-CA suffix keeps two different xfer CAs apart in logs and stores.
    let tag = hex(&sha256(key.public_key_raw())[..4]);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("xfer CA {tag}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    validity(&mut params, days);
    Ok(params)
}

/// A server certificate names NAME, each extra name and the loopback
/// names, for serverAuth only; a client certificate names NAME alone, for
/// clientAuth only (it is never checked against a host name, and more names
/// would only blur who it identifies).
fn peer_params(name: &str, role: Role, extra: &[String], days: u32) -> Result<CertificateParams> {
    let mut sans: Vec<String> = vec![name.to_owned()];
    if role == Role::Server {
        for s in extra.iter().map(String::as_str).chain(LOOPBACK_SANS) {
            if !sans.iter().any(|x| x == s) {
                sans.push(s.to_owned());
            }
        }
    }
    let mut params = CertificateParams::new(sans).map_err(|e| Error::Usage(format!("invalid --san: {e}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    validity(&mut params, days);
    Ok(params)
}

fn load_ca(ca_pem: &Path, ca_key: &Path) -> Result<Issuer<'static, KeyPair>> {
    let bad = |path: &Path, message: String| Error::Identity { what: path.display().to_string(), message };
    let key_pem = fs::read_to_string(ca_key).map_err(|e| {
        bad(
            ca_key,
            format!("{e}: the CA key is needed to sign new peers (it stays on the machine that ran keygen first)"),
        )
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(ca_key, format!("not a usable private key: {e}")))?;
    let cert_pem = fs::read_to_string(ca_pem).map_err(|e| bad(ca_pem, e.to_string()))?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(ca_pem, format!("not a usable CA certificate: {e}")))
}

fn write_pem(path: &Path, pem: &str, private: bool) -> Result<()> {
    let mut opts = crate::platform::file_options(private);
    opts.write(true).create(true).truncate(true);
    let ctx = || format!("cannot write {}", path.display());
    let mut f = opts.open(path).map_err(|e| Error::io(ctx(), e))?;
    if private {
        // An existing file keeps its old mode through open(); tighten it.
        crate::platform::set_mode(&f, 0o600).map_err(|e| Error::io(ctx(), e))?;
    }
    f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(ctx(), e))
}

fn summary(subject: String, role: Option<Role>, params: &CertificateParams, der: &CertificateDer<'_>) -> CertSummary {
    CertSummary { subject, role, sha256: fingerprint(der), not_after: params.not_after }
}

fn ca_subject(params: &CertificateParams) -> String {
    match params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        _ => "xfer CA".to_owned(),
    }
}

/// How `keygen --renew` re-issues a certificate.
#[derive(Debug, Clone)]
pub struct RenewConfig {
    pub days: u32,
    pub keep_key: bool,
    pub key_type: KeyType,
    /// The role the user asked for: needed only for certificates made
    /// before roles existed (valid for both); otherwise it must match.
    pub role: Option<Role>,
    /// Names to add to a server certificate's (`--renew NAME --san HOST`).
    pub add_sans: Vec<String>,
}

/// Re-issues peer NAME in DIR with the same name, role and (for servers)
/// subject alternative names, plus any `add_sans`, valid `days` from now, signed by the same CA;
/// with a new key unless `keep_key`. Replaces NAME.pem (and NAME.key)
/// atomically.
pub fn renew(dir: &Path, name: &str, cfg: RenewConfig) -> Result<Vec<Written>> {
    let RenewConfig { days, keep_key, key_type, .. } = cfg;
    check_name(name)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let old = CertInfo::read(&cert_path)?;
    let role = renewed_role(&old, name, cfg.role)?;
    if role == Role::Client && !cfg.add_sans.is_empty() {
        return Err(Error::Usage(format!(
            "--san applies to server certificates only: {} is a client certificate, which names only {name}",
            old.source
        )));
    }
    // Same names: the old SANs minus the defaults peer_params adds back
    // (a client keeps only its own name).
    let mut extra: Vec<String> =
        old.names.iter().filter(|n| *n != name && !LOOPBACK_SANS.contains(&n.as_str())).cloned().collect();
    for san in &cfg.add_sans {
        if !extra.contains(san) && san != name && !LOOPBACK_SANS.contains(&san.as_str()) {
            extra.push(san.clone());
        }
    }
    // Built first, so a bad --san is refused before anything is written.
    let params = peer_params(name, role, &extra, days)?;
    let issuer = load_ca(&dir.join("ca.pem"), &dir.join("ca.key"))?;
    let _lock = crl::lock_ca(dir)?;
    let old_serial = serial_of(&cert_path)?;
    // The certificate replaced stays on record, so `--revoke NAME` still
    // reaches it (with --keep-key it is not revoked now, and shares the key).
    let issued = dir.join(ISSUED_DIR);
    fs::create_dir_all(&issued).map_err(|e| Error::io(format!("cannot create {}", issued.display()), e))?;
    let old_pem =
        fs::read_to_string(&cert_path).map_err(|e| Error::io(format!("cannot read {}", cert_path.display()), e))?;
    replace_pem(&issued.join(format!("{name}.{}.pem", hex(&old_serial))), &old_pem, false)?;
    let key = if keep_key {
        let pem =
            fs::read_to_string(&key_path).map_err(|e| Error::io(format!("cannot read {}", key_path.display()), e))?;
        KeyPair::from_pem(&pem)
            .map_err(|e| Error::Identity { what: key_path.display().to_string(), message: e.to_string() })?
    } else {
        key_type.generate()?
    };
    let cert = params.signed_by(&key, &issuer).map_err(gen_error)?;
    // Both new files are written before either replaces its old one, so
    // the key and certificate on disk always match.
    let cert_tmp = tmp_beside(&cert_path);
    write_pem(&cert_tmp, &cert.pem(), false)?;
    let mut written = Vec::new();
    if !keep_key {
        replace_pem(&key_path, &key.serialize_pem(), true)?;
        written.push(Written { path: key_path, cert: None, note: PRIVATE_KEY });
    }
    fs::rename(&cert_tmp, &cert_path).map_err(|e| Error::io(format!("cannot write {}", cert_path.display()), e))?;
    let sum = summary(name.to_owned(), Some(role), &params, cert.der());
    written.push(Written { path: cert_path, cert: Some(sum), note: "" });
    if !keep_key {
        // A new key usually means the old one is not to be trusted any
        // more (or soon will not be): its certificate goes on the CRL.
        let r = crl::add_to_crl_locked(dir, &issuer, vec![old_serial])?;
        written.push(Written { path: r.crl, cert: None, note: "revocation list: the replaced certificate is revoked" });
    }
    Ok(written)
}

/// The role a renewed certificate gets: the one it has. A certificate from
/// before roles (valid for both) needs the user to choose.
fn renewed_role(old: &CertInfo, name: &str, asked: Option<Role>) -> Result<Role> {
    match (old.role, asked) {
        (CertRole::Server, None | Some(Role::Server)) => Ok(Role::Server),
        (CertRole::Client, None | Some(Role::Client)) => Ok(Role::Client),
        (CertRole::Both, Some(role)) => Ok(role),
        (CertRole::Both, None) => Err(Error::Usage(format!(
            "{} is an older certificate valid for both server and client use: \
             renew it with --server or --client to give it one role \
             (`xfer keygen --renew {name} --client`)",
            old.source
        ))),
        (had @ (CertRole::Server | CertRole::Client), Some(role)) => Err(Error::Usage(format!(
            "{} is a {} certificate and --renew keeps its role: issue a {} certificate under another name instead",
            old.source,
            had.as_str(),
            role.as_str()
        ))),
        (other, _) => Err(Error::Usage(format!("{} is a {} certificate, not a peer's", old.source, other.as_str()))),
    }
}

/// `DIR/.NAME.tmp` for `DIR/NAME`: distinct for each file, hidden.
fn tmp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique, so two writers (a keygen and a serving --enroll) never share
    // one temporary file.
    let mut random = [0u8; 6];
    aws_lc_rs::rand::fill(&mut random).expect("system randomness");
    path.with_file_name(format!(".{name}.{}.tmp", hex(&random)))
}

/// Writes a PEM file through a temporary name and a rename, so readers
/// (a server reloading on SIGHUP) never see half of it.
fn replace_pem(path: &Path, pem: &str, private: bool) -> Result<()> {
    let tmp = tmp_beside(path);
    write_pem(&tmp, pem, private)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

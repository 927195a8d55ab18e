//! `xfer keygen`: a local CA and the peer certificates it signs.
//!
//! Everything is generated in memory first and written only once every
//! target is known to be free (or `--force` was given), so a refused run
//! writes nothing at all. Private keys are created with mode 0600. This module
//! reports what it wrote; printing is the CLI's job.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// Validity of a CA created by keygen.
pub const CA_DAYS: u32 = 3650;
/// Default validity of a peer certificate.
pub const PEER_DAYS: u32 = 365;
/// Names every peer certificate carries besides its own, so loopback works.
pub const LOOPBACK_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct KeygenConfig {
    pub dir: PathBuf,
    /// Peers to issue; each gets NAME.pem and NAME.key.
    pub names: Vec<String>,
    /// Extra subject alternative names (DNS names or IP addresses).
    pub sans: Vec<String>,
    pub days: u32,
    /// Validity of a CA created by this run.
    pub ca_days: u32,
    pub key_type: KeyType,
    pub force: bool,
}

impl KeygenConfig {
    /// Peers `names` in `dir`, with the default validity and key type.
    pub fn new(dir: PathBuf, names: Vec<String>) -> KeygenConfig {
        KeygenConfig {
            dir,
            names,
            sans: Vec::new(),
            days: PEER_DAYS,
            ca_days: CA_DAYS,
            key_type: KeyType::P256,
            force: false,
        }
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
    fn generate(self) -> Result<KeyPair> {
        let alg = match self {
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        };
        KeyPair::generate_for(alg).map_err(gen_error)
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
    /// SHA-256 of the DER, as colon-separated upper-case hex.
    pub sha256: String,
    pub not_after: OffsetDateTime,
}

/// Generates the CA (when missing) and each peer, then writes them.
pub fn keygen(cfg: &KeygenConfig) -> Result<Vec<Written>> {
    for name in &cfg.names {
        check_name(name)?;
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
        files.push((ca_pem.clone(), cert.pem(), Some(summary(subject, &params, cert.der()))));
        files.push((ca_key.clone(), key.serialize_pem(), None));
        Issuer::new(params, key)
    };

    for name in &cfg.names {
        let key = cfg.key_type.generate()?;
        let params = peer_params(name, &cfg.sans, cfg.days)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_error)?;
        files.push((cfg.dir.join(format!("{name}.pem")), cert.pem(), Some(summary(name.clone(), &params, cert.der()))));
        files.push((cfg.dir.join(format!("{name}.key")), key.serialize_pem(), None));
    }

    if !cfg.force {
        let taken: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).filter(|p| p.exists()).collect();
        if !taken.is_empty() {
            return Err(refuse_overwrite(&taken));
        }
    }
    fs::create_dir_all(&cfg.dir).map_err(|e| Error::io(format!("cannot create {}", cfg.dir.display()), e))?;
    let mut written = Vec::new();
    for (path, pem, cert) in files {
        write_pem(&path, &pem, cert.is_none())?;
        let note = if cert.is_some() { "" } else { PRIVATE_KEY };
        written.push(Written { path, cert, note });
    }
    Ok(written)
}

/// Names become file names and DNS names, so keep them to a safe alphabet.
fn check_name(name: &str) -> Result<()> {
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

fn peer_params(name: &str, extra: &[String], days: u32) -> Result<CertificateParams> {
    let mut sans: Vec<String> = Vec::new();
    for s in std::iter::once(name).chain(extra.iter().map(String::as_str)).chain(LOOPBACK_SANS) {
        if !sans.iter().any(|x| x == s) {
            sans.push(s.to_owned());
        }
    }
    let mut params = CertificateParams::new(sans).map_err(|e| Error::Usage(format!("invalid --san: {e}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
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
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    let ctx = || format!("cannot write {}", path.display());
    let mut f = opts.open(path).map_err(|e| Error::io(ctx(), e))?;
    if private {
        // An existing file keeps its old mode through open(); tighten it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(ctx(), e))?;
    }
    f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(ctx(), e))
}

fn summary(subject: String, params: &CertificateParams, der: &CertificateDer<'_>) -> CertSummary {
    CertSummary { subject, sha256: fingerprint(der), not_after: params.not_after }
}

fn ca_subject(params: &CertificateParams) -> String {
    match params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        _ => "xfer CA".to_owned(),
    }
}

/// Re-issues peer NAME in DIR with the same name and subject alternative
/// names, valid `days` from now, signed by the same CA; with a new key
/// unless `keep_key`. Replaces NAME.pem (and NAME.key) atomically.
pub fn renew(dir: &Path, name: &str, days: u32, keep_key: bool, key_type: KeyType) -> Result<Vec<Written>> {
    check_name(name)?;
    let issuer = load_ca(&dir.join("ca.pem"), &dir.join("ca.key"))?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let old = CertInfo::read(&cert_path)?;
    let old_serial = serial_of(&cert_path)?;
    let key = if keep_key {
        let pem =
            fs::read_to_string(&key_path).map_err(|e| Error::io(format!("cannot read {}", key_path.display()), e))?;
        KeyPair::from_pem(&pem)
            .map_err(|e| Error::Identity { what: key_path.display().to_string(), message: e.to_string() })?
    } else {
        key_type.generate()?
    };
    // Same names: the old SANs minus the defaults peer_params adds back.
    let extra: Vec<String> =
        old.names.iter().filter(|n| *n != name && !LOOPBACK_SANS.contains(&n.as_str())).cloned().collect();
    let params = peer_params(name, &extra, days)?;
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
    written.push(Written { path: cert_path, cert: Some(summary(name.to_owned(), &params, cert.der())), note: "" });
    if !keep_key {
        // A new key usually means the old one is not to be trusted any
        // more (or soon will not be): its certificate goes on the CRL.
        let r = add_to_crl(dir, &issuer, old_serial)?;
        written.push(Written { path: r.crl, cert: None, note: "revocation list: the replaced certificate is revoked" });
    }
    Ok(written)
}

/// `DIR/.NAME.tmp` for `DIR/NAME`: distinct for each file, hidden.
fn tmp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes a PEM file through a temporary name and a rename, so readers
/// (a server reloading on SIGHUP) never see half of it.
fn replace_pem(path: &Path, pem: &str, private: bool) -> Result<()> {
    let tmp = tmp_beside(path);
    write_pem(&tmp, pem, private)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// What `keygen --revoke` did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The CRL written.
    pub crl: PathBuf,
    /// Serial number of the certificate revoked, in hex.
    pub serial: String,
    /// Entries in the CRL now (earlier revocations are kept).
    pub entries: usize,
    /// The certificate was already on the list.
    pub already: bool,
}

/// Adds the certificate `DIR/NAME.pem` to `DIR/ca.crl`, signed by the CA,
/// keeping every earlier entry. Servers and clients given the CRL (by
/// default, `ca.crl` beside their `ca.pem`) then refuse that certificate.
pub fn revoke(dir: &Path, name: &str) -> Result<Revocation> {
    check_name(name)?;
    let issuer = load_ca(&dir.join("ca.pem"), &dir.join("ca.key"))?;
    let serial = serial_of(&dir.join(format!("{name}.pem")))?;
    add_to_crl(dir, &issuer, serial)
}

/// The raw serial number of the certificate in a PEM file.
fn serial_of(cert_path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let bad = |message: String| Error::Identity { what: cert_path.display().to_string(), message };
    let der = CertificateDer::from_pem_file(cert_path).map_err(|e| bad(format!("{e:?}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

/// Re-issues `DIR/ca.crl` with `serial` added to its entries.
fn add_to_crl(dir: &Path, issuer: &Issuer<'static, KeyPair>, serial: Vec<u8>) -> Result<Revocation> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |path: &Path, message: String| Error::Identity { what: path.display().to_string(), message };
    let crl_path = dir.join("ca.crl");
    let mut revoked: Vec<rcgen::RevokedCertParams> = Vec::new();
    if crl_path.exists() {
        let old =
            CertificateRevocationListDer::from_pem_file(&crl_path).map_err(|e| bad(&crl_path, format!("{e:?}")))?;
        let (_, old) = x509_parser::parse_x509_crl(&old).map_err(|e| bad(&crl_path, e.to_string()))?;
        for r in old.iter_revoked_certificates() {
            revoked.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let already = revoked.iter().any(|r| r.serial_number.to_bytes() == serial);
    if !already {
        revoked.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: Some(rcgen::RevocationReason::Unspecified),
            invalidity_date: None,
        });
    }
    let now = OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CA_DAYS.into()),
        // Seconds since 1970: grows with each reissue, as RFC 5280 wants.
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let entries = params.revoked_certs.len();
    let crl = params.signed_by(issuer).map_err(gen_error)?;
    let pem = crl.pem().map_err(gen_error)?;
    replace_pem(&crl_path, &pem, false)?;
    Ok(Revocation { crl: crl_path, serial: hex(&serial), entries, already })
}

/// Certificates expiring within this many days draw a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// What `keygen --list` shows about one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Where it came from (a file's path), for messages.
    pub source: String,
    /// The subject's common name.
    pub subject: String,
    /// DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
    pub sha256: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
}

impl CertInfo {
    /// Reads the first certificate of a PEM file.
    pub fn read(path: &Path) -> Result<CertInfo> {
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_file(path).map_err(|e| Error::Identity {
            what: path.display().to_string(),
            message: format!("not a PEM certificate: {e:?}"),
        })?;
        CertInfo::from_der(path.display().to_string(), &der)
    }

    /// Describes a DER certificate that came from `source`.
    pub fn from_der(source: String, der: &[u8]) -> Result<CertInfo> {
        let bad = |message: String| Error::Identity { what: source.clone(), message };
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| bad(format!("unreadable certificate: {e}")))?;
        let subject = cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).collect::<Vec<_>>().join(",");
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                match gn {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => names.extend(ip_text(ip)),
                    _ => {}
                }
            }
        }
        let (not_before, not_after) =
            (cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime());
        Ok(CertInfo { subject, names, sha256: fingerprint(der), not_before, not_after, is_ca: cert.is_ca(), source })
    }

    /// A warning when the certificate has expired or expires soon.
    pub fn expiry_warning(&self) -> Option<String> {
        let now = OffsetDateTime::now_utc();
        let left = self.not_after - now;
        let (path, date) = (&self.source, self.not_after.date());
        if self.not_before > now {
            Some(format!("certificate {path} is not valid until {} (check this machine's clock)", self.not_before))
        } else if left.is_negative() {
            Some(format!("certificate {path} expired on {date}: issue a new one with `xfer keygen`"))
        } else if left.whole_days() < EXPIRY_WARNING_DAYS {
            Some(format!(
                "certificate {path} expires in {} days ({date}): renew it soon with `xfer keygen`",
                left.whole_days()
            ))
        } else {
            None
        }
    }
}

fn ip_text(raw: &[u8]) -> Option<String> {
    let ip: std::net::IpAddr = match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok()?.into(),
        16 => <[u8; 16]>::try_from(raw).ok()?.into(),
        _ => return None,
    };
    Some(ip.to_string())
}

/// Every certificate in `dir` (its `*.pem` files), the CA first.
pub fn list(dir: &Path) -> Result<Vec<CertInfo>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "pem") {
            out.push(CertInfo::read(&path)?);
        }
    }
    out.sort_by(|a, b| (!a.is_ca, &a.source).cmp(&(!b.is_ca, &b.source)));
    Ok(out)
}

/// SHA-256 fingerprint of a certificate, `AB:CD:...` as openssl prints it.
pub fn fingerprint(der: &[u8]) -> String {
    sha256(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Revocation: `keygen --revoke` and the CRL that `--renew` extends when
//! it replaces a key. One CRL per CA, `DIR/ca.crl`, re-signed whole each
//! time with every earlier entry kept.

use std::path::{Path, PathBuf};

use rcgen::{Issuer, KeyPair, SerialNumber};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::{CA_DAYS, check_name, gen_error, hex, load_ca, replace_pem};
use crate::error::{Error, Result};

/// What `keygen --revoke` did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The CRL written.
    pub crl: PathBuf,
    /// Serial numbers of the certificates revoked now, in hex.
    pub serials: Vec<String>,
    /// How many of the certificates asked for were on the list already.
    pub already: usize,
    /// Entries in the CRL now (earlier revocations are kept).
    pub entries: usize,
}

/// Revokes every certificate on record for peer NAME: `DIR/NAME.pem` and
/// each one enrollment or renewal issued (`DIR/issued/NAME.*.pem`), by
/// adding them to `DIR/ca.crl`, signed by the CA, keeping every earlier
/// entry. Servers and clients given the CRL (by default, `ca.crl` beside
/// their `ca.pem`) then refuse them.
pub fn revoke(dir: &Path, name: &str) -> Result<Revocation> {
    check_name(name)?;
    let issuer = load_ca(&dir.join("ca.pem"), &dir.join("ca.key"))?;
    // Listed under the lock: a renewal cannot slip a certificate in
    // between the listing and the new list.
    let _lock = lock_ca(dir)?;
    let mut serials = Vec::new();
    let own = dir.join(format!("{name}.pem"));
    if own.exists() {
        serials.push(serial_of(&own)?);
    }
    for path in issued_files(dir, Some(name)) {
        serials.push(serial_of(&path)?);
    }
    if serials.is_empty() {
        return Err(Error::Usage(format!(
            "no certificate of {name} on record: neither {} nor any in {} (`xfer keygen --list` shows them)",
            own.display(),
            dir.join(ISSUED_DIR).display()
        )));
    }
    add_to_crl_locked(dir, &issuer, serials)
}

/// Where the CA's machine keeps a copy of each certificate enrollment and
/// renewal issue, so `keygen --revoke NAME` can reach them all.
pub const ISSUED_DIR: &str = "issued";

/// The certificates on record in `DIR/issued` (for `name` only, if given).
pub fn issued_files(dir: &Path, name: Option<&str>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(ISSUED_DIR)) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            // NAME.SERIAL.pem; names may hold dots, serials never do.
            match file.strip_suffix(".pem").and_then(|f| f.rsplit_once('.')) {
                Some((n, _)) => name.is_none_or(|want| n == want),
                None => false,
            }
        })
        .collect();
    out.sort();
    out
}

/// Serialises changes to the CA's files (`ca.crl`, `issued/`) between
/// `keygen` runs and a serving `--enroll`: held while it lives.
pub(super) fn lock_ca(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".ca.lock");
    let ctx = || format!("cannot lock {}", path.display());
    let f = crate::platform::file_options(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(ctx(), e))?;
    f.lock().map_err(|e| Error::io(ctx(), e))?;
    Ok(f)
}

/// The raw serial number of the certificate in a PEM file.
pub(super) fn serial_of(cert_path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let bad = |message: String| Error::Identity { what: cert_path.display().to_string(), message };
    let der = CertificateDer::from_pem_file(cert_path).map_err(|e| bad(format!("{e:?}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

/// Re-issues `DIR/ca.crl` with `serials` added to its entries, under the
/// CA lock (concurrent revocations all land). Entries for certificates on
/// record that expired over a day ago are dropped: they are refused anyway.
pub(super) fn add_to_crl(dir: &Path, issuer: &Issuer<'static, KeyPair>, serials: Vec<Vec<u8>>) -> Result<Revocation> {
    let _lock = lock_ca(dir)?;
    add_to_crl_locked(dir, issuer, serials)
}

/// [`add_to_crl`] for a caller that holds the CA lock.
pub(super) fn add_to_crl_locked(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    serials: Vec<Vec<u8>>,
) -> Result<Revocation> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |path: &Path, message: String| Error::Identity { what: path.display().to_string(), message };
    let crl_path = dir.join("ca.crl");
    let expired = expired_serials(dir);
    let mut revoked: Vec<rcgen::RevokedCertParams> = Vec::new();
    if crl_path.exists() {
        let old =
            CertificateRevocationListDer::from_pem_file(&crl_path).map_err(|e| bad(&crl_path, format!("{e:?}")))?;
        let (_, old) = x509_parser::parse_x509_crl(&old).map_err(|e| bad(&crl_path, e.to_string()))?;
        for r in old.iter_revoked_certificates().filter(|r| !expired.contains(r.raw_serial())) {
            revoked.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    let (mut added, mut already) = (Vec::new(), 0);
    for serial in serials {
        if revoked.iter().any(|r| r.serial_number.to_bytes() == serial) {
            already += 1;
            continue;
        }
        revoked.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            reason_code: Some(rcgen::RevocationReason::Unspecified),
            invalidity_date: None,
        });
        added.push(hex(&serial));
    }
    let now = OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CA_DAYS.into()),
        // Nanoseconds since 1970: grows with each reissue, as RFC 5280
        // wants, even for several in one second.
        crl_number: SerialNumber::from_slice(&now.unix_timestamp_nanos().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let entries = params.revoked_certs.len();
    let crl = params.signed_by(issuer).map_err(gen_error)?;
    let pem = crl.pem().map_err(gen_error)?;
    replace_pem(&crl_path, &pem, false)?;
    Ok(Revocation { crl: crl_path, serials: added, already, entries })
}

/// Serials of the certificates on record (`DIR/*.pem`, `DIR/issued/`)
/// that expired more than a day ago.
fn expired_serials(dir: &Path) -> std::collections::HashSet<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let cutoff = OffsetDateTime::now_utc() - Duration::days(1);
    let own = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
    let mut out = std::collections::HashSet::new();
    for path in own.filter(|p| p.extension().is_some_and(|x| x == "pem")).chain(issued_files(dir, None)) {
        let Ok(der) = CertificateDer::from_pem_file(&path) else { continue };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { continue };
        if cert.validity().not_after.to_datetime() < cutoff {
            out.insert(cert.raw_serial().to_vec());
        }
    }
    out
}

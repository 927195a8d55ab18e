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
pub(super) fn serial_of(cert_path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let bad = |message: String| Error::Identity { what: cert_path.display().to_string(), message };
    let der = CertificateDer::from_pem_file(cert_path).map_err(|e| bad(format!("{e:?}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

/// Re-issues `DIR/ca.crl` with `serial` added to its entries.
pub(super) fn add_to_crl(dir: &Path, issuer: &Issuer<'static, KeyPair>, serial: Vec<u8>) -> Result<Revocation> {
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

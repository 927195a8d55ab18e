//! Reading certificates back: what `keygen --list` shows, the role a
//! certificate may play, and the warnings printed when one is loaded.

use std::fs;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{Role, sha256};
use crate::error::{Error, Result};

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
    /// What it may be used for, from its extended key usage.
    pub role: CertRole,
}

/// What a certificate may be used for, read from the certificate itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Ca,
    Server,
    Client,
    /// Server and client: made before keygen gave certificates one role.
    /// Still accepted, with a warning, until renewed.
    Both,
    /// No usage xfer accepts (e.g. code signing only).
    Other,
}

impl CertRole {
    /// For messages: "server", "client", "server and client", …
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Ca => "CA",
            CertRole::Server => "server",
            CertRole::Client => "client",
            CertRole::Both => "server and client",
            CertRole::Other => "non-TLS",
        }
    }

    /// True when it may act in `role`.
    pub fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (CertRole::Server | CertRole::Both, Role::Server) | (CertRole::Client | CertRole::Both, Role::Client)
        )
    }

    /// The role of a parsed certificate. No extended key usage at all
    /// means any use to WebPKI, so it counts as both.
    pub fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> CertRole {
        if cert.is_ca() {
            return CertRole::Ca;
        }
        match cert.extended_key_usage() {
            Ok(Some(eku)) => {
                let eku = eku.value;
                match (eku.any || eku.server_auth, eku.any || eku.client_auth) {
                    (true, true) => CertRole::Both,
                    (true, false) => CertRole::Server,
                    (false, true) => CertRole::Client,
                    (false, false) => CertRole::Other,
                }
            }
            Ok(None) => CertRole::Both,
            Err(_) => CertRole::Other,
        }
    }
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
        let role = CertRole::of(&cert);
        Ok(CertInfo {
            subject,
            names,
            sha256: fingerprint(der),
            not_before,
            not_after,
            is_ca: cert.is_ca(),
            role,
            source,
        })
    }

    /// A warning for a certificate made before keygen gave each one role:
    /// whoever holds its key can act as a server too.
    pub fn role_warning(&self) -> Option<String> {
        (self.role == CertRole::Both).then(|| {
            format!(
                "certificate {} is valid for both server and client use (made by an older `xfer keygen`): \
                 whoever holds its key can also act as a server; on the CA's machine, re-issue it with one role: \
                 `xfer keygen --renew {} --client` (or --server)",
                self.source, self.subject
            )
        })
    }

    /// A warning when the certificate has expired or expires soon.
    pub fn expiry_warning(&self) -> Option<String> {
        let now = OffsetDateTime::now_utc();
        let left = self.not_after - now;
        let (path, date) = (&self.source, self.not_after.date());
        if self.not_before > now {
            Some(format!("certificate {path} is not valid until {} (check this machine's clock)", self.not_before))
        } else if left.is_negative() {
            let fix = if self.is_ca {
                "issue a new one with `xfer keygen`".to_owned()
            } else {
                format!("ask the CA's machine for a new invite (`xfer keygen --invite {}`)", self.subject)
            };
            Some(format!("certificate {path} expired on {date}: {fix}"))
        } else if left.whole_days() < EXPIRY_WARNING_DAYS {
            let how = if self.is_ca {
                "`xfer keygen` (a new CA)".to_owned()
            } else {
                format!(
                    "`xfer renew HOST --name {0}` (from this machine), or `xfer keygen --renew {0}` on the CA's machine",
                    self.subject
                )
            };
            Some(format!("certificate {path} expires in {} days ({date}): renew it soon with {how}", left.whole_days()))
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
    // Then what enrollment and renewal issued, kept for revocation.
    for path in super::issued_files(dir, None) {
        out.push(CertInfo::read(&path)?);
    }
    out.sort_by(|a, b| (!a.is_ca, &a.source).cmp(&(!b.is_ca, &b.source)));
    Ok(out)
}

/// SHA-256 fingerprint of a certificate, `AB:CD:...` as openssl prints it.
pub fn fingerprint(der: &[u8]) -> String {
    sha256(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

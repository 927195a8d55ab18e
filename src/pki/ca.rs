//! The CA as a signer for other processes than `keygen`: what `serve
//! --enroll` loads to issue certificates for invites and renewals, without
//! ever seeing the requester's private key.

use std::path::{Path, PathBuf};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use super::crl::{add_to_crl, lock_ca};
use super::{ISSUED_DIR, Revocation, Role, gen_error, hex, load_ca, peer_params, replace_pem};
use crate::error::{Error, Result};

/// A CA certificate with its private key, ready to sign.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// Every certificate of `ca.pem`, the signing one first.
    certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads `DIR/ca.pem` and `DIR/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca> {
        let pem = dir.join("ca.pem");
        let issuer = load_ca(&pem, &dir.join("ca.key"))?;
        let certs = CertificateDer::pem_file_iter(&pem)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::Identity { what: pem.display().to_string(), message: format!("{e:?}") })?;
        if certs.is_empty() {
            return Err(Error::Identity { what: pem.display().to_string(), message: "no certificate in it".into() });
        }
        Ok(Ca { dir: dir.to_owned(), issuer, certs })
    }

    /// The folder of `ca.pem` and `ca.key`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificates clients should trust, the signing CA first.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Issues a certificate for `public_key` with exactly the name, role
    /// and extra names given (whatever the request asked for), and keeps a
    /// copy in `DIR/issued/NAME.SERIAL.pem` first, so that `keygen --revoke
    /// NAME` reaches it: no certificate leaves that the CA cannot revoke.
    pub fn issue(
        &self,
        name: &str,
        role: Role,
        sans: &[String],
        days: u32,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>> {
        let _lock = lock_ca(&self.dir)?;
        self.issue_locked(name, role, sans, days, public_key)
    }

    /// Renews the certificate with serial `old` (see [`Ca::issue`]) unless
    /// the CRL lists it: checked and issued under the CA lock, so a
    /// concurrent `keygen --revoke` either sees the new certificate or
    /// refuses it. `None` when `old` is revoked.
    pub fn renew(
        &self,
        old: &[u8],
        name: &str,
        role: Role,
        sans: &[String],
        days: u32,
        public_key: &impl PublicKeyData,
    ) -> Result<Option<CertificateDer<'static>>> {
        let _lock = lock_ca(&self.dir)?;
        if self.lists_revoked(old)? {
            return Ok(None);
        }
        self.issue_locked(name, role, sans, days, public_key).map(Some)
    }

    fn issue_locked(
        &self,
        name: &str,
        role: Role,
        sans: &[String],
        days: u32,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>> {
        let params = peer_params(name, role, sans, days)?;
        let cert = params.signed_by(public_key, &self.issuer).map_err(gen_error)?;
        let serial = params.serial_number.as_ref().map(|s| hex(&s.to_bytes())).unwrap_or_default();
        let issued = self.dir.join(ISSUED_DIR);
        std::fs::create_dir_all(&issued).map_err(|e| Error::io(format!("cannot create {}", issued.display()), e))?;
        replace_pem(&issued.join(format!("{name}.{serial}.pem")), &cert.pem(), false)?;
        Ok(cert.der().clone())
    }

    /// Adds `serial` to `DIR/ca.crl`.
    pub fn revoke_serial(&self, serial: &[u8]) -> Result<Revocation> {
        add_to_crl(&self.dir, &self.issuer, vec![serial.to_vec()])
    }

    /// True when `cert` was signed by this CA's key (not by another CA of
    /// a bundle).
    pub fn signed(&self, cert: &[u8]) -> bool {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.certs[0]) else { return false };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else { return false };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// True when `DIR/ca.crl` as it is now lists `serial` (revocations
    /// made since the server last loaded its CRL count).
    pub fn lists_revoked(&self, serial: &[u8]) -> Result<bool> {
        let Some(der) = self.crl()? else { return Ok(false) };
        let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| Error::Identity {
            what: self.dir.join("ca.crl").display().to_string(),
            message: e.to_string(),
        })?;
        Ok(crl.iter_revoked_certificates().any(|r| r.raw_serial() == serial))
    }

    /// The CA's current revocation list (DER), if it has one.
    pub fn crl(&self) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join("ca.crl");
        if !path.exists() {
            return Ok(None);
        }
        let crl = CertificateRevocationListDer::from_pem_file(&path)
            .map_err(|e| Error::Identity { what: path.display().to_string(), message: format!("{e:?}") })?;
        Ok(Some(crl.to_vec()))
    }
}

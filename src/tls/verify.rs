//! Certificate verifiers: WebPKI's own checks, with refusals turned into
//! words that name the certificate and what is wrong with it.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{describe_cert, preauth_warn};
use crate::pki::CertRole;
use crate::text::Safe;

/// Verifies client certificates exactly as WebPKI does, and logs which
/// certificate was refused against which CA: the handshake error that
/// reaches the connection handler names neither.
#[derive(Debug)]
pub(super) struct NamingClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) ca: String,
}

impl ClientCertVerifier for NamingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now).inspect_err(|e| {
            let why = match e {
                rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
                ) => WrongRole::of("client", end_entity).to_string(),
                other => other.to_string(),
            };
            preauth_warn(format_args!(
                "client certificate refused: {why} (certificate {}, CA {})",
                describe_cert(end_entity),
                self.ca
            ));
        })
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Refuses a revocation list that no CA in use signed: it would revoke
/// nothing, silently. (That the signature is good is checked by WebPKI each
/// time a peer's certificate is checked against it.)
/// A peer presented a certificate valid under the CA but for another role:
/// "the server presented a client certificate (runner-7)".
#[derive(Debug)]
pub struct WrongRole {
    /// "server" or "client": the side that presented it.
    pub side: &'static str,
    pub role: CertRole,
    /// The certificate's common name, escaped.
    pub name: String,
}

impl WrongRole {
    fn of(side: &'static str, der: &CertificateDer<'_>) -> WrongRole {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => {
                let name = c.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).collect::<Vec<_>>();
                WrongRole { side, role: CertRole::of(&c), name: Safe(&name.join(",")).to_string() }
            }
            Err(_) => WrongRole { side, role: CertRole::Other, name: "unreadable".into() },
        }
    }
}

impl fmt::Display for WrongRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} presented a {} certificate ({})", self.side, self.role.as_str(), self.name)
    }
}

impl std::error::Error for WrongRole {}

/// A server certificate of the CA that does not carry the name asked for,
/// with the names it does carry (escaped: a certificate's text is not
/// trusted to be printable), so the message can say what would work.
#[derive(Debug)]
pub struct WrongName {
    /// The certificate's common name: the NAME `xfer keygen` issued it as.
    pub subject: String,
    pub names: Vec<String>,
}

impl WrongName {
    fn of(der: &CertificateDer<'_>) -> WrongName {
        match crate::pki::CertInfo::from_der(String::new(), der) {
            Ok(info) => WrongName {
                subject: Safe(&info.subject).to_string(),
                names: info.names.iter().map(|n| Safe(n).to_string()).collect(),
            },
            Err(_) => WrongName { subject: "unreadable".into(), names: Vec::new() },
        }
    }
}

impl fmt::Display for WrongName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "it names {}", if self.names.is_empty() { "nothing".to_owned() } else { self.names.join(", ") })
    }
}

impl std::error::Error for WrongName {}

/// WebPKI's server verifier (chain, CRL, extended key usage, then the
/// name), with a refusal for a missing name turned into a [`WrongName`]
/// and one for the wrong role into a [`WrongRole`]
/// that names the certificate: a runner's certificate posing as the
/// server is the mistake (or attack) most worth explaining.
#[derive(Debug)]
pub(super) struct RoleNamingServerVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for RoleNamingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            ) => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(WrongRole::of(
                "server", end_entity,
            ))))),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(WrongName::of(
                end_entity,
            ))))),
            other => other,
        })
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

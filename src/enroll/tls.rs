//! TLS for the enrollment exchange (ALPN `xfer-enroll/1`).
//!
//! Server: the same certificate as for transfers, sent with the CA
//! certificates (a new machine has no `ca.pem` yet: it checks the chain
//! against the fingerprint in its code). A client certificate is optional
//! here, and only here: without one, the only thing a connection can do is
//! prove an invite. With one, it is verified like any client's (chain,
//! validity, revocation) but may have either role, so a server can renew
//! its own certificate.
//!
//! Client: before anything is sent, the server's chain must end at the CA
//! whose SHA-256 the invite code carries, and name the host dialled.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::code::{hex, sha256};
use crate::error::{Error, Result};
use crate::protocol::enroll::ENROLL_ALPN;
use crate::tls::{self, Identity};

/// The server's config for enrollment connections.
pub fn server_config(id: &Identity, cas: &[CertificateDer<'static>]) -> Result<Arc<ServerConfig>> {
    let provider = tls::provider();
    let client = WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider.clone())
        .with_crls(id.crls.clone())
        .allow_unknown_revocation_status()
        // Only on this ALPN, whose one request without a certificate is
        // the proof of an invite (see the module docs).
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Identity { what: id.paths.ca.to_string(), message: e.to_string() })?;
    let server = WebPkiServerVerifier::builder_with_provider(id.roots.clone(), provider.clone())
        .with_crls(id.crls.clone())
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| Error::Identity { what: id.paths.ca.to_string(), message: e.to_string() })?;
    let verifier = Arc::new(AnyRoleVerifier { client, server });
    let mut chain = id.chain.clone();
    chain.extend(cas.iter().filter(|c| !id.chain.contains(c)).cloned());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Identity { what: id.paths.ca.to_string(), message: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, id.key.clone_key())
        .map_err(|e| Error::Identity { what: id.paths.key.to_string(), message: e.to_string() })?;
    config.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The config of `xfer enroll`: no certificate of its own, the server
/// pinned by its CA's fingerprint.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<Arc<ClientConfig>> {
    let provider = tls::provider();
    let verifier = Arc::new(PinnedVerifier { pin, provider: provider.clone() });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls { peer: String::new(), message: e.to_string() })?
        .dangerous()
        // Not a weaker check: WebPKI's, against the one CA the code names.
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The server's chain does not end at the CA the invite code names.
#[derive(Debug)]
pub struct PinMismatch {
    pub pin: [u8; 32],
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's certificate does not chain to the CA in the invite code (sha256 {}): \
             nothing was sent; check the address, or someone may be in the middle",
            hex(&self.pin)
        )
    }
}

impl std::error::Error for PinMismatch {}

#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let mismatch = || {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PinMismatch {
                pin: self.pin,
            }))))
        };
        let ca = intermediates.iter().find(|c| sha256(c) == self.pin).ok_or_else(mismatch)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| mismatch())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|_| mismatch())?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is never used".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts a valid certificate of either role; none at all is left to the
/// request (only an invite's proof is answered without one).
#[derive(Debug)]
struct AnyRoleVerifier {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl ClientCertVerifier for AnyRoleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.client.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        match self.client.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
            )) => {
                // A server renewing its own certificate: the same checks,
                // for serverAuth, against the first name it carries.
                let name = tls::cert_names(end_entity).into_iter().next().unwrap_or_default();
                let name = ServerName::try_from(name)
                    .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
                self.server.verify_server_cert(end_entity, intermediates, &name, &[], now)?;
                Ok(ClientCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.client.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.client.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.client.supported_verify_schemes()
    }
}

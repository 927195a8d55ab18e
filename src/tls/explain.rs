//! Failed TLS sessions explained in sentences a user can act on.

use rustls::{AlertDescription, CertificateError};

use super::verify::{WrongName, WrongRole};
use super::{IdentityPaths, date};

/// Explains a failed TLS session from the client's point of view.
pub fn explain_for_client(e: &rustls::Error, host: &str, ids: &IdentityPaths) -> String {
    let (ca, cert) = (&ids.ca, &ids.cert);
    match e {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the server's certificate does not name '{host}': pass --server-name with a name it has, or on the \
                 CA's machine add the name (`xfer keygen --renew NAME --keep-key --san {host}`, then SIGHUP the server)"
            ),
            CertificateError::Other(o) if o.0.downcast_ref::<WrongName>().is_some() => {
                let w = o.0.downcast_ref::<WrongName>().expect("checked");
                let pick = w.names.first().map_or("NAME", String::as_str);
                format!(
                    "the server's certificate does not name '{host}' ({w}): connect with one of those, or add \
                     --server-name {pick}, or on the CA's machine add the name with `xfer keygen --renew {} --keep-key --san {host}` \
                     and send the server SIGHUP",
                    w.subject
                )
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by the CA in {ca}: both sides must use certificates from the same `xfer keygen` CA"
            ),
            CertificateError::Revoked => "the server's certificate is revoked (it is listed in the CRL)".to_owned(),
            CertificateError::Other(o) if o.0.downcast_ref::<WrongRole>().is_some() => format!(
                "{}: it cannot act as a server, so this is not the server you meant to reach (or someone is posing as it)",
                o.0
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                format!("the server's certificate is {}", describe_cert_error(ce))
            }
            other => format!("the server's certificate was rejected: {}", describe_cert_error(other)),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::DecryptError => format!(
                "the server rejected this client's certificate {cert}: it is not signed by the CA the server trusts"
            ),
            AlertDescription::CertificateRequired => "the server requires a client certificate".to_owned(),
            AlertDescription::UnsupportedCertificate => format!(
                "the server refused this client's certificate {cert}: it is not a client certificate; \
                 use a client identity (`xfer keygen NAME` issues one)"
            ),
            AlertDescription::CertificateExpired => {
                format!(
                    "the server says this client's certificate {cert} has expired: \
                     ask the CA's machine for a new one (`xfer keygen --invite NAME`, then `xfer enroll`)"
                )
            }
            AlertDescription::CertificateRevoked => {
                format!("the server says this client's certificate {cert} is revoked")
            }
            other => format!("the server ended the handshake with alert {other:?}"),
        },
        e if not_xfer(e).is_some() => format!("the server does not speak xfer ({})", not_xfer(e).unwrap_or_default()),
        other => other.to_string(),
    }
}

/// Why a handshake shows the peer is not an xfer server at all, if it
/// does: it answered with something other than TLS (an HTTP server, SSH),
/// with older TLS, or with TLS for another protocol.
pub fn not_xfer(e: &rustls::Error) -> Option<&'static str> {
    match e {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            Some("it answered with something other than TLS 1.3: is this the right port?")
        }
        rustls::Error::PeerIncompatible(_) | rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => {
            Some("its TLS does not match xfer's: TLS 1.3 with the usual algorithms")
        }
        rustls::Error::NoApplicationProtocol
        | rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            Some("a TLS service for another protocol: it does not offer the xfer/1 ALPN")
        }
        _ => None,
    }
}

/// Explains a failed TLS session from the server's point of view (for logs).
pub fn explain_for_server(e: &rustls::Error) -> String {
    match e {
        rustls::Error::NoCertificatesPresented => "the client presented no certificate".to_owned(),
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "the client's certificate was rejected: it is not a client certificate".to_owned(),
        rustls::Error::InvalidCertificate(ce) => {
            format!("the client's certificate was rejected: {}", describe_cert_error(ce))
        }
        rustls::Error::NoApplicationProtocol => "the client does not speak the xfer protocol (no xfer ALPN)".to_owned(),
        rustls::Error::InvalidMessage(m) => format!("not a TLS 1.3 client ({m:?})"),
        rustls::Error::PeerIncompatible(p) => format!("incompatible TLS client: {p:?}"),
        other => other.to_string(),
    }
}

fn describe_cert_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "not signed by the configured CA".into(),
        CertificateError::Revoked => "revoked (it is listed in the CRL)".into(),
        CertificateError::ExpiredContext { time, not_after } => {
            format!("expired on {} (it is now {})", date(not_after), date(time))
        }
        CertificateError::NotValidYetContext { time, not_before } => {
            format!("not valid until {} (it is now {})", date(not_before), date(time))
        }
        CertificateError::Expired => "expired".into(),
        CertificateError::NotValidYet => "not valid yet".into(),
        other => format!("{other:?}"),
    }
}

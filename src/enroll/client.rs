//! `xfer enroll` and `xfer renew`: the client side of the exchange.
//!
//! Both generate the key pair here (unless `renew --keep-key`), send only a
//! certificate request, check what comes back (our public key, the name
//! expected, a chain to the right CA) and only then write files: all of
//! them or none.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::code::{InviteCode, sha256};
use super::tls::{PinMismatch, pinned_client_config};
use crate::client::parse_target;
use crate::connection::with_timeout;
use crate::error::{Error, Result};
use crate::pki::{CertInfo, CertRole, KeyType};
use crate::protocol::enroll::{ENROLL_ALPN, EXPORTER_LABEL, EXPORTER_LEN, Refusal, Request, Response, check_response};
use crate::protocol::frame::HEADER_LEN;
use crate::tls::{self, Identity, IdentityPaths, Pem};

/// Time for the TCP connection, the handshake, and the exchange each.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What `xfer enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    /// `HOST[:PORT]` of a server started with `--enroll`.
    pub target: String,
    /// The name the server's certificate must carry, when not HOST.
    pub server_name: Option<String>,
    pub code: InviteCode,
    /// Where to write `ca.pem`, `NAME.pem`, `NAME.key` (and `ca.crl`).
    pub dir: PathBuf,
    pub force: bool,
    pub key_type: KeyType,
}

/// What `xfer renew` needs.
#[derive(Debug, Clone)]
pub struct RenewConfig {
    pub target: String,
    pub server_name: Option<String>,
    /// The identity to renew: its certificate and key must be files.
    pub identity: IdentityPaths,
    pub keep_key: bool,
    /// Ask the CA to revoke the certificate being replaced.
    pub revoke_old: bool,
    pub key_type: KeyType,
}

/// A certificate received and checked, with the files written for it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub role: CertRole,
    pub not_after: OffsetDateTime,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
}

/// What an `ISSUED` answer carries.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: CertificateDer<'static>,
    pub cas: Vec<CertificateDer<'static>>,
    pub crl: Option<Vec<u8>>,
}

/// Joins: checks where files go, makes a key, proves the invite, and
/// writes the CA, the certificate and the key.
pub async fn enroll(cfg: EnrollConfig) -> Result<Outcome> {
    let name = cfg.code.name.clone();
    let (cert_path, key_path, ca_path) =
        (cfg.dir.join(format!("{name}.pem")), cfg.dir.join(format!("{name}.key")), cfg.dir.join("ca.pem"));
    // Refused before anything is generated or sent.
    let taken: Vec<&PathBuf> = [&cert_path, &key_path].into_iter().filter(|p| p.exists()).collect();
    if !taken.is_empty() && !cfg.force {
        return Err(Error::Usage(format!(
            "refusing to overwrite {}: nothing was sent and the code is still unused; pass --force to replace, \
             or choose another --dir",
            taken.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let keep_ca = match first_cert_sha256(&ca_path) {
        Some(have) if have == cfg.code.ca_sha256 => true,
        Some(_) if !cfg.force => {
            return Err(Error::Usage(format!(
                "{} holds another CA than the one in the invite code: nothing was sent; \
                 choose another --dir, or pass --force to replace it",
                ca_path.display()
            )));
        }
        _ => false,
    };
    let key = cfg.key_type.generate()?;
    let csr = csr(&name, &key)?;
    let issued = request(&cfg.target, cfg.server_name.as_deref(), &cfg.code, &csr).await?;
    let ca = issued
        .cas
        .iter()
        .find(|c| sha256(c) == cfg.code.ca_sha256)
        .ok_or_else(|| protocol(&cfg.target, "the answer does not include the CA the invite code names".into()))?;
    let info = check_issued(&cfg.target, &issued.cert, &key, ca, &name)?;
    let mut files = Vec::new();
    if !keep_ca {
        files.push((ca_path, pem_of("CERTIFICATE", &issued.cas), false));
    }
    if let Some(crl) = &issued.crl {
        let path = cfg.dir.join("ca.crl");
        if fresh_crl(&cfg.target, crl, ca, &path)? {
            files.push((path, pem_of("X509 CRL", std::slice::from_ref(crl)), false));
        }
    }
    files.push((key_path, key.serialize_pem(), true));
    files.push((cert_path, pem_of("CERTIFICATE", std::slice::from_ref(&issued.cert)), false));
    crate::pki::create_private_dir(&cfg.dir)?;
    let written = write_all_or_none(files)?;
    Ok(Outcome { name, role: info.role, not_after: info.not_after, written })
}

/// The exchange itself, with any certificate request: connects to
/// `target` trusting only the CA the code names, proves the invite for
/// this connection, and returns the answer. (`enroll` is this plus the
/// checks and files; tests use it to send requests `enroll` never would.)
pub async fn request(target: &str, server_name: Option<&str>, code: &InviteCode, csr: &[u8]) -> Result<Issued> {
    let mut tls = connect(target, server_name, pinned_client_config(code.ca_sha256)?, None).await?;
    let mut exporter = [0u8; EXPORTER_LEN];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
        .map_err(|e| Error::Tls { peer: target.to_owned(), message: e.to_string() })?;
    let proof = code.prove(&exporter, csr);
    exchange(&mut tls, target, Request::Enroll { token_id: code.token_id, proof, csr: csr.to_vec() }).await
}

/// Renews: a new certificate (and key, unless `keep_key`) for the current
/// identity, same name and role, written over the old files.
pub async fn renew(cfg: RenewConfig) -> Result<Outcome> {
    let (Pem::File(cert_path), Pem::File(key_path)) = (&cfg.identity.cert, &cfg.identity.key) else {
        return Err(Error::Usage(
            "renew writes the new certificate and key to files: name them with --certs/--name or --cert/--key, \
             not with PEM text in $XFER_CERT/$XFER_KEY"
                .into(),
        ));
    };
    let id = Identity::load(&cfg.identity)?;
    let old = CertInfo::from_der(cert_path.display().to_string(), &id.chain[0])?;
    let now = OffsetDateTime::now_utc();
    if old.not_after < now || old.not_before > now {
        return Err(Error::Enrollment(format!(
            "{} is not valid now (valid {} to {}): only a valid certificate can be renewed; \
             on the CA's machine, make a new invite (`xfer keygen --invite {}`) and run `xfer enroll` here",
            cert_path.display(),
            old.not_before.date(),
            old.not_after.date(),
            old.subject
        )));
    }
    let key = if cfg.keep_key {
        let pem =
            fs::read_to_string(key_path).map_err(|e| Error::io(format!("cannot read {}", key_path.display()), e))?;
        KeyPair::from_pem(&pem)
            .map_err(|e| Error::Identity { what: key_path.display().to_string(), message: e.to_string() })?
    } else {
        cfg.key_type.generate()?
    };
    let csr = csr(&old.subject, &key)?;
    let mut tls = connect(&cfg.target, cfg.server_name.as_deref(), id.renew_config()?, Some(&cfg.identity)).await?;
    // In TLS 1.3 the server's verdict on this certificate (revoked,
    // expired) arrives as an alert after the client's handshake is done.
    let issued = exchange(&mut tls, &cfg.target, Request::Renew { revoke_old: cfg.revoke_old, csr }).await.map_err(
        |e| match e {
            Error::ConnectionLost { peer, source } => {
                let host = cfg.server_name.clone().unwrap_or_else(|| peer.clone());
                explain(&peer, &host, Some(&cfg.identity), source)
            }
            other => other,
        },
    )?;
    let ca = issued
        .cas
        .iter()
        .find(|c| id.roots_contain(c))
        .ok_or_else(|| protocol(&cfg.target, "the answer's CA is not one this identity trusts".into()))?;
    if issued.cert.as_ref() == id.chain[0].as_ref() {
        // Only a server that could not sign would send the same one back.
        return Err(protocol(&cfg.target, "the answer is the current certificate, not a new one".into()));
    }
    let info = check_issued(&cfg.target, &issued.cert, &key, ca, &old.subject)?;
    if info.role != old.role {
        return Err(protocol(&cfg.target, format!("the renewed certificate is a {} one", info.role.as_str())));
    }
    let mut files = Vec::new();
    if let (Some(crl), Some(path)) = (&issued.crl, cfg.identity.crl.as_ref().map(|c| c.path.clone()))
        && fresh_crl(&cfg.target, crl, ca, &path)?
    {
        files.push((path, pem_of("X509 CRL", std::slice::from_ref(crl)), false));
    }
    if !cfg.keep_key {
        files.push((key_path.clone(), key.serialize_pem(), true));
    }
    files.push((cert_path.clone(), pem_of("CERTIFICATE", std::slice::from_ref(&issued.cert)), false));
    let written = write_all_or_none(files)?;
    Ok(Outcome { name: old.subject, role: info.role, not_after: info.not_after, written })
}

/// A certificate request for `key`. Its subject is informative only: the
/// server decides the name.
fn csr(name: &str, key: &KeyPair) -> Result<Vec<u8>> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let req = params
        .serialize_request(key)
        .map_err(|e| Error::io("cannot make a certificate request", std::io::Error::other(e)))?;
    Ok(req.der().to_vec())
}

/// TCP, then TLS 1.3 offering only `xfer-enroll/1`.
async fn connect(
    target: &str,
    server_name: Option<&str>,
    config: Arc<ClientConfig>,
    identity: Option<&IdentityPaths>,
) -> Result<TlsStream<TcpStream>> {
    let (host, port) = parse_target(target)?;
    let name = server_name.unwrap_or(&host).to_owned();
    let sni = ServerName::try_from(name.clone())
        .map_err(|_| Error::Usage(format!("'{name}' is not a valid DNS name or IP address")))?;
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let tcp = with_timeout("connect", STEP_TIMEOUT, async {
        TcpStream::connect((host.as_str(), port)).await.map_err(|source| Error::Connect { addr: addr.clone(), source })
    })
    .await?;
    let tls = with_timeout("TLS handshake", STEP_TIMEOUT, async {
        TlsConnector::from(config).connect(sni, tcp).await.map_err(|e| explain(&addr, &host, identity, e))
    })
    .await?;
    if tls.get_ref().1.alpn_protocol() != Some(ENROLL_ALPN) {
        return Err(not_enrolling(&addr));
    }
    Ok(tls)
}

fn not_enrolling(addr: &str) -> Error {
    Error::Enrollment(format!(
        "{addr} does not take enrollments: on the CA's machine, start the server with `xfer serve --enroll`"
    ))
}

/// A failed handshake, in words: a CA that is not the code's first.
fn explain(addr: &str, host: &str, identity: Option<&IdentityPaths>, e: std::io::Error) -> Error {
    let Some(r) = tls::rustls_error(&e) else {
        return Error::ConnectionLost { peer: addr.to_owned(), source: e };
    };
    let no_alpn = matches!(
        r,
        rustls::Error::NoApplicationProtocol
            | rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
    );
    if let (Some(why), false) = (tls::not_xfer(r), no_alpn) {
        return Error::NotXfer { addr: addr.to_owned(), why };
    }
    let message = match r {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))
            if o.0.downcast_ref::<PinMismatch>().is_some() =>
        {
            o.0.to_string()
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
        | rustls::Error::NoApplicationProtocol => return not_enrolling(addr),
        other => match identity {
            Some(ids) => tls::explain_for_client(other, host, ids),
            None => format!("the server's certificate was refused: {other}"),
        },
    };
    Error::Enrollment(message)
}

/// Sends the request, reads the one answer.
async fn exchange(tls: &mut TlsStream<TcpStream>, target: &str, req: Request) -> Result<Issued> {
    let lost = |source| Error::ConnectionLost { peer: target.to_owned(), source };
    let answer = with_timeout("enrollment", STEP_TIMEOUT, async {
        tls.write_all(&req.encode()).await.map_err(lost)?;
        tls.flush().await.map_err(lost)?;
        let mut header = [0u8; HEADER_LEN];
        tls.read_exact(&mut header).await.map_err(lost)?;
        let total = check_response(&header).map_err(|e| protocol(target, e.to_string()))?.expect("a whole header");
        let mut buf = vec![0u8; total];
        buf[..HEADER_LEN].copy_from_slice(&header);
        tls.read_exact(&mut buf[HEADER_LEN..]).await.map_err(lost)?;
        Response::decode(&buf).map_err(|e| protocol(target, e.to_string()))
    })
    .await?;
    let _ = tls.shutdown().await;
    match answer {
        Some((Response::Issued { cert, cas, crl }, _)) => Ok(Issued {
            cert: CertificateDer::from(cert),
            cas: cas.into_iter().map(CertificateDer::from).collect(),
            crl,
        }),
        Some((Response::Refused { refusal, message }, _)) => {
            let message = crate::text::escape(&message).into_owned();
            Err(match refusal {
                Refusal::InvalidInvite | Refusal::RateLimited | Refusal::NotRenewable => Error::Enrollment(message),
                _ => Error::Protocol { peer: target.to_owned(), message: format!("the server refused: {message}") },
            })
        }
        None => Err(protocol(target, "incomplete answer".into())),
    }
}

/// Checks an issued certificate: for our key, named `name`, one role, and
/// valid under `ca` for that role now.
fn check_issued(
    target: &str,
    cert: &CertificateDer<'_>,
    key: &KeyPair,
    ca: &CertificateDer<'_>,
    name: &str,
) -> Result<CertInfo> {
    let info = CertInfo::from_der("the issued certificate".into(), cert)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| protocol(target, e.to_string()))?;
    if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(protocol(target, "the issued certificate is not for the key made here".into()));
    }
    if info.subject != name {
        return Err(protocol(
            target,
            format!("the issued certificate names {}, not {name}", crate::text::escape(&info.subject)),
        ));
    }
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone().into_owned()).map_err(|e| protocol(target, e.to_string()))?;
    let roots = Arc::new(roots);
    let provider = tls::provider();
    let checked = match info.role {
        CertRole::Client => WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|v| v.verify_client_cert(cert, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())),
        CertRole::Server => WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let sni = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
                v.verify_server_cert(cert, &[], &sni, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
            }),
        other => Err(format!("a {} certificate", other.as_str())),
    };
    checked.map_err(|why| protocol(target, format!("the issued certificate does not check: {why}")))?;
    Ok(info)
}

/// Whether to write the revocation list an answer carries: only if the
/// CA signed it (an error otherwise), and only if it is not older than the
/// one already at `path` (an older list would bring revoked peers back).
fn fresh_crl(target: &str, crl: &[u8], ca: &CertificateDer<'_>, path: &Path) -> Result<bool> {
    use rustls_pki_types::CertificateRevocationListDer;
    let bad = |why: String| protocol(target, format!("the revocation list in the answer {why}"));
    let (_, ca) = x509_parser::parse_x509_certificate(ca).map_err(|e| bad(e.to_string()))?;
    let (_, new) = x509_parser::parse_x509_crl(crl).map_err(|e| bad(format!("does not parse: {e}")))?;
    new.verify_signature(ca.public_key()).map_err(|_| bad("is not signed by the CA".into()))?;
    let Ok(old) = CertificateRevocationListDer::from_pem_file(path) else { return Ok(true) };
    Ok(x509_parser::parse_x509_crl(&old).map_or(true, |(_, old)| new.last_update() >= old.last_update()))
}

fn protocol(target: &str, message: String) -> Error {
    Error::protocol(target, message)
}

/// SHA-256 of the first certificate in a PEM file, if there is one.
fn first_cert_sha256(path: &Path) -> Option<[u8; 32]> {
    let first = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    Some(sha256(&first))
}

fn pem_of(tag: &str, ders: &[impl AsRef<[u8]>]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    ders.iter().map(|d| pem::encode_config(&pem::Pem::new(tag, d.as_ref().to_vec()), lf)).collect()
}

/// Writes every file to a temporary name beside it, then renames them all
/// into place; on any failure before the renames, nothing is left.
fn write_all_or_none(files: Vec<(PathBuf, String, bool)>) -> Result<Vec<PathBuf>> {
    let mut staged = Vec::new();
    let result = (|| {
        for (path, text, private) in &files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = path.with_file_name(format!(".{name}.tmp"));
            let ctx = || format!("cannot write {}", path.display());
            // Never through a link someone left at the temporary name.
            let _ = fs::remove_file(&tmp);
            let mut f = crate::platform::file_options(*private)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| Error::io(ctx(), e))?;
            staged.push(tmp.clone());
            f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(ctx(), e))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for tmp in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let mut written = Vec::new();
    for ((path, ..), tmp) in files.into_iter().zip(staged) {
        fs::rename(&tmp, &path).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        written.push(path);
    }
    Ok(written)
}

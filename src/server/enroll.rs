//! `serve --enroll`: one enrollment exchange per connection that negotiated
//! `xfer-enroll/1`. The peer sends one request (an invite's proof with a
//! certificate request, or a renewal under its current certificate) and
//! gets one answer, all under a short deadline, while the connection keeps
//! its place among the handshakes in progress: to the server's limits it is
//! still an unauthenticated peer.
//!
//! The certificate's name, role and extra names come from the invite (or
//! the certificate being renewed), never from the request: a CSR only
//! contributes its public key, after its signature is checked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::CertificateSigningRequestParams;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{error, info};

use super::gate::{Ticket, source};
use super::handler::Tls;
use super::{EnrollLive, Live, Shared};
use crate::enroll::code::{check_proof, hex, unhex};
use crate::enroll::invites::Redeemed;
use crate::pki::{CertInfo, CertRole, LOOPBACK_SANS, Role};
use crate::protocol::enroll::{EXPORTER_LABEL, EXPORTER_LEN, Refusal, Request, Response, check_request};
use crate::protocol::frame::HEADER_LEN;
use crate::tls;
use crate::transfer::blocking;

/// Time an enrollment connection has, after its handshake, to send its
/// request and read the answer.
pub const ENROLL_DEADLINE: Duration = Duration::from_secs(10);
/// Failed attempts one source may make per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at once; the oldest windows go first beyond that.
const MAX_SOURCES: usize = 4096;

/// The one answer to every invite that cannot be used, whatever the reason.
pub const INVALID_INVITE: &str = "the invite code is not valid: expired, used or unknown";

/// Serves one enrollment connection to its end; logs, never fails.
pub(super) async fn serve(mut tls: Tls, addr: SocketAddr, shared: Arc<Shared>, live: Arc<Live>, ticket: Ticket) {
    let Some(en) = live.enroll.clone() else { return };
    tokio::select! {
        r = tokio::time::timeout(ENROLL_DEADLINE, exchange(&mut tls, addr, &shared, en)) => {
            if r.is_err() {
                tls::preauth_warn(format_args!("{addr}: enrollment: no request within {}s", ENROLL_DEADLINE.as_secs()));
            }
        }
        // Newer handshakes needed the place, as for any unauthenticated peer.
        _ = ticket.evicted.cancelled() => {}
    }
}

async fn exchange(tls: &mut Tls, addr: SocketAddr, shared: &Arc<Shared>, en: Arc<EnrollLive>) {
    let request = match read_request(tls).await {
        Ok(r) => r,
        Err(why) => {
            tls::preauth_warn(format_args!("{addr}: enrollment: {why}"));
            return;
        }
    };
    let conn = tls.get_ref().1;
    let chain: Vec<CertificateDer<'static>> =
        conn.peer_certificates().unwrap_or_default().iter().map(|c| c.clone().into_owned()).collect();
    let mut exporter = [0u8; EXPORTER_LEN];
    if conn.export_keying_material(&mut exporter, EXPORTER_LABEL, None).is_err() {
        return;
    }
    let shared = shared.clone();
    let response = blocking(move || match request {
        Request::Enroll { token_id, proof, csr } => {
            enroll(&shared, &en, addr, Proof { token_id, proof, exporter }, &csr)
        }
        Request::Renew { revoke_old, csr } => renew(&shared, &en, addr, &chain, revoke_old, &csr),
    })
    .await;
    let _ = tls.write_all(&response.encode()).await;
    let _ = tls.shutdown().await;
}

/// Reads the one request, bounded by its header before allocation.
async fn read_request(tls: &mut Tls) -> Result<Request, String> {
    let mut header = [0u8; HEADER_LEN];
    tls.read_exact(&mut header).await.map_err(|e| format!("no request: {e}"))?;
    let total = check_request(&header).map_err(|e| e.to_string())?.expect("a whole header");
    let mut buf = vec![0u8; total];
    buf[..HEADER_LEN].copy_from_slice(&header);
    tls.read_exact(&mut buf[HEADER_LEN..]).await.map_err(|e| format!("incomplete request: {e}"))?;
    match Request::decode(&buf).map_err(|e| e.to_string())? {
        Some((req, _)) => Ok(req),
        None => Err("incomplete request".into()),
    }
}

struct Proof {
    token_id: [u8; 8],
    proof: [u8; 64],
    exporter: [u8; EXPORTER_LEN],
}

fn refused(refusal: Refusal, message: impl Into<String>) -> Response {
    Response::Refused { refusal, message: message.into() }
}

/// An invite's proof and request: a certificate, or one answer for every
/// invite that cannot be used.
fn enroll(shared: &Shared, en: &EnrollLive, addr: SocketAddr, p: Proof, csr: &[u8]) -> Response {
    let id = hex(&p.token_id);
    if let Some(wait) = shared.failures.blocked(addr.ip()) {
        tls::preauth_warn(format_args!("{addr}: enrollment refused (token {id}): too many failed attempts"));
        return refused(
            Refusal::RateLimited,
            format!("too many failed enrollment attempts from this address: try again in {}s", wait.as_secs() + 1),
        );
    }
    let Ok(params) = CertificateSigningRequestParams::from_der(&csr.to_vec().into()) else {
        shared.failures.fail(addr.ip());
        tls::preauth_warn(format_args!("{addr}: enrollment refused (token {id}): a malformed certificate request"));
        return refused(Refusal::BadRequest, "the certificate request does not parse or its signature does not verify");
    };
    let proven = |verifier: &str| {
        unhex::<32>(verifier).is_some_and(|v| check_proof(&v, &p.token_id, &p.exporter, csr, &p.proof))
    };
    let invite = match en.invites.redeem(&id, &addr.to_string(), |i| proven(&i.verifier)) {
        Ok(Redeemed::Issued(invite)) => invite,
        Ok(other) => {
            shared.failures.fail(addr.ip());
            let why = match other {
                Redeemed::Unknown => "unknown".to_owned(),
                Redeemed::Expired(i) => format!("expired (for {})", i.name),
                Redeemed::Used(i) => format!("already used (for {})", i.name),
                Redeemed::BadProof(i) => format!("wrong secret or replayed proof (for {})", i.name),
                Redeemed::Issued(_) => unreachable!(),
            };
            tls::preauth_warn(format_args!("{addr}: enrollment refused (token {id}): invite {why}"));
            return refused(Refusal::InvalidInvite, INVALID_INVITE);
        }
        Err(e) => {
            error!(%addr, token = %id, "enrollment failed: {e}");
            return refused(Refusal::Internal, "the server could not record the invite as used: nothing was issued");
        }
    };
    match issued(en, &invite.name, invite.role(), &invite.sans, invite.days, &params) {
        Ok(response) => {
            info!(%addr, token = %id, name = %invite.name, role = %invite.role().as_str(), "enrollment: certificate issued");
            response
        }
        Err(e) => {
            error!(%addr, token = %id, "enrollment failed after the invite was used: {e}");
            refused(Refusal::Internal, "the server could not sign the certificate; ask for a new invite")
        }
    }
}

/// A new certificate for the one this connection was verified with: same
/// name, role, extra names and lifetime.
fn renew(
    shared: &Shared,
    en: &EnrollLive,
    addr: SocketAddr,
    chain: &[CertificateDer<'_>],
    revoke_old: bool,
    csr: &[u8],
) -> Response {
    let Some(leaf) = chain.first() else {
        return refused(
            Refusal::NotRenewable,
            "renewal needs the certificate to renew, and this connection presented none",
        );
    };
    let Ok(old) = CertInfo::from_der("the presented certificate".into(), leaf) else {
        return refused(Refusal::NotRenewable, "the presented certificate cannot be read");
    };
    let name = old.subject.clone();
    let role = match old.role {
        CertRole::Server => Role::Server,
        CertRole::Client => Role::Client,
        CertRole::Both => {
            return refused(
                Refusal::NotRenewable,
                format!(
                    "{} is an older certificate valid for both server and client use: it cannot be renewed as it is; \
                     on the CA's machine, re-issue it with one role (`xfer keygen --renew {} --client` or --server)",
                    crate::text::escape(&name),
                    crate::text::escape(&name)
                ),
            );
        }
        _ => return refused(Refusal::NotRenewable, "the presented certificate is not a peer's"),
    };
    if crate::pki::check_name(&name).is_err() {
        return refused(Refusal::NotRenewable, "the presented certificate's name cannot be used for a file name");
    }
    // Only this CA's own certificates: renewing one from another CA of a
    // bundle (a retired or a partner CA) would mint its names under this one.
    if !en.ca.signed(leaf) {
        return refused(
            Refusal::NotRenewable,
            "the certificate was issued by another CA than the one this server signs with: \
             it cannot be renewed here; ask for a new invite (`xfer keygen --invite NAME`)",
        );
    }
    let serial = x509_parser::parse_x509_certificate(leaf).map(|(_, c)| c.raw_serial().to_vec()).unwrap_or_default();
    if !shared.renewals.allow(&name) {
        return refused(
            Refusal::RateLimited,
            format!("{} renewals an hour at most for one name: try again later", MAX_RENEWALS),
        );
    }
    let Ok(params) = CertificateSigningRequestParams::from_der(&csr.to_vec().into()) else {
        return refused(Refusal::BadRequest, "the certificate request does not parse or its signature does not verify");
    };
    let sans: Vec<String> =
        old.names.iter().filter(|n| **n != name && !LOOPBACK_SANS.contains(&n.as_str())).cloned().collect();
    let days = u32::try_from((old.not_after - old.not_before).whole_days()).unwrap_or(1).max(1);
    // The CRL as it is now, not as last loaded, checked under the CA lock
    // with the issuing: a revocation made since (keygen --revoke, before
    // any reload) stops the renewal, and one made during it sees the new
    // certificate.
    let cert = match en.ca.renew(&serial, &name, role, &sans, days, &params.public_key) {
        Ok(Some(cert)) => cert,
        Ok(None) => return refused(Refusal::NotRenewable, "this certificate is revoked: ask for a new invite"),
        Err(e) => {
            error!(%addr, %name, "renewal failed: {e}");
            return refused(Refusal::Internal, "the server could not sign the certificate");
        }
    };
    let mut response = match answer(en, cert) {
        Ok(r) => r,
        Err(e) => {
            error!(%addr, %name, "renewal failed: {e}");
            return refused(Refusal::Internal, "the server could not read its CA files");
        }
    };
    if revoke_old {
        let revoked = en.ca.revoke_serial(&serial).map_err(|e| e.to_string());
        if let Err(e) = revoked {
            error!(%addr, %name, "renewal: could not revoke the old certificate: {e}");
            return refused(Refusal::Internal, "the server could not revoke the old certificate: nothing was issued");
        }
        // The new list applies to this server at once, as after SIGHUP.
        if let Err(e) = shared.reload() {
            error!("reload after a revocation failed: {e}");
        }
        if let (Response::Issued { crl, .. }, Ok(new)) = (&mut response, en.ca.crl()) {
            *crl = new;
        }
    }
    info!(%addr, %name, role = %role.as_str(), revoked_old = revoke_old, "renewal: certificate issued");
    response
}

fn issued(
    en: &EnrollLive,
    name: &str,
    role: Role,
    sans: &[String],
    days: u32,
    csr: &CertificateSigningRequestParams,
) -> crate::error::Result<Response> {
    let cert = en.ca.issue(name, role, sans, days, &csr.public_key)?;
    answer(en, cert)
}

/// The `ISSUED` answer for `cert`: it, the CA certificates, the CRL.
fn answer(en: &EnrollLive, cert: CertificateDer<'static>) -> crate::error::Result<Response> {
    let cas = en.ca.certs().iter().take(crate::protocol::enroll::MAX_CAS).map(|c| c.to_vec()).collect();
    Ok(Response::Issued { cert: cert.to_vec(), cas, crl: en.ca.crl()? })
}

/// Renewals one name may make per hour: a year's certificate needs one;
/// an enrolled peer looping on renew would mint certificates (and CRL
/// entries) without end.
pub const MAX_RENEWALS: u32 = 10;

/// Renewals per certificate name in the last hour.
#[derive(Debug, Default)]
pub struct Renewals {
    by_name: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Renewals {
    /// Counts a renewal for `name`, if it is within the limit.
    pub fn allow(&self, name: &str) -> bool {
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, since)| since.elapsed() < Duration::from_secs(3600));
        let entry = map.entry(name.to_owned()).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.0 <= MAX_RENEWALS
    }
}

/// Failed enrollment attempts per source (an IPv4 address or an IPv6 /64).
#[derive(Debug, Default)]
pub struct Failures {
    by_source: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Failures {
    /// How long `ip` must still wait, if it has used up its failures.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let (count, since) = map.get(&source(ip))?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= MAX_FAILURES).then_some(left)
    }

    /// Counts a failed attempt from `ip`.
    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SOURCES {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if map.len() >= MAX_SOURCES {
                let oldest = map.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| *k);
                oldest.map(|k| map.remove(&k));
            }
        }
        let entry = map.entry(source(ip)).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_a_source_for_the_rest_of_its_window_only() {
        let f = Failures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            f.fail(a);
        }
        assert!(f.blocked(a).is_none());
        f.fail(a);
        assert!(f.blocked(a).is_some_and(|left| left <= FAILURE_WINDOW));
        // Another source, and another host of the same IPv6 /64.
        assert!(f.blocked("192.0.2.2".parse().unwrap()).is_none());
        for _ in 0..MAX_FAILURES {
            f.fail(b);
        }
        assert!(f.blocked("2001:db8::2".parse().unwrap()).is_some());
    }
}

//! Enrollment (`keygen --invite`, `serve --enroll`, `enroll`) and renewal
//! (`renew`), over real TLS on loopback: a machine joins with a one-time
//! code, its key never leaving it, and nothing else gets a certificate.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

/// `keygen --invite NAME [extra]` in `pki`'s folder: the code, the one line
/// on stdout.
fn invite(pki: &Pki, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["keygen", "--dir", "certs", "--invite", name];
    args.extend_from_slice(extra);
    let run = run_in(pki.dir.path(), &args, &[]);
    run.assert_code(0);
    let out = run.stdout();
    assert_eq!(out.lines().count(), 1, "{run}");
    out.trim().to_owned()
}

fn enroll_server(pki: &Pki, work: &Dir) -> XferServer {
    XferServer::start(pki, &work.join("root"), &["--enroll"])
}

/// `xfer enroll ADDR CODE --dir DIR` from `cwd`.
fn enroll(cwd: &Path, server: &XferServer, code: &str, dir: &str) -> Run {
    run_in(cwd, &["enroll", &server.addr, code, "--dir", dir], &[])
}

fn listing(pki: &Pki) -> String {
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--list"], &[]).stdout()
}

const INVALID: &str = "the invite code is not valid: expired, used or unknown";

#[test]
fn an_invited_machine_enrolls_with_its_own_key_and_pushes_at_once() {
    let pki = Pki::new();
    let work = Dir::new();
    let code = invite(&pki, "runner-7", &[]);
    let [prefix, token, secret, ca_hash, name] = code.splitn(5, '-').collect::<Vec<_>>()[..] else { panic!("{code}") };
    assert_eq!((prefix, name, secret.len(), ca_hash.len()), ("xfer1", "runner-7", 32, 64));
    assert!(listing(&pki).contains("invite runner-7"), "{}", listing(&pki));
    let server = enroll_server(&pki, &work);

    let joiner = Dir::new();
    let run = enroll(joiner.path(), &server, &code, "certs");
    run.assert_code(0);
    assert!(run.stdout().contains("enrolled as runner-7 (client certificate"), "{run}");
    let certs = joiner.join("certs");
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), std::fs::read(pki.certs().join("ca.pem")).unwrap());
    let key_mode = std::fs::metadata(certs.join("runner-7.key")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777, 0o600);
    // The key was made on the new machine: the CA's machine never had it.
    assert!(!pki.certs().join("runner-7.key").exists());
    let list = run_in(joiner.path(), &["keygen", "--dir", "certs", "--list"], &[]);
    assert!(list.stdout().contains("runner-7 (client)  names runner-7 "), "{list}");

    joiner.write("a.txt", b"enrolled");
    let push = run_in(joiner.path(), &["push", &server.addr, "a.txt", "--certs", "certs", "--name", "runner-7"], &[]);
    push.assert_code(0);
    assert_eq!(std::fs::read(work.join("root/a.txt")).unwrap(), b"enrolled");

    // The server logs the token id and the outcome, never the secret.
    assert!(server.wait_for_log(&format!("token={token}")), "{}", server.log());
    assert!(server.log().contains("certificate issued"), "{}", server.log());
    assert!(!server.log().contains(secret), "{}", server.log());
    assert!(listing(&pki).contains("used"), "{}", listing(&pki));
}

#[test]
fn a_code_works_once_even_when_two_machines_race_and_after_a_restart() {
    let pki = Pki::new();
    let work = Dir::new();
    let code = invite(&pki, "runner-7", &[]);
    let mut server = enroll_server(&pki, &work);
    let (a, b) = (Dir::new(), Dir::new());
    let racers: Vec<_> = [&a, &b]
        .iter()
        .map(|d| {
            Command::new(env!("CARGO_BIN_EXE_xfer"))
                .current_dir(d.path())
                .args(["enroll", &server.addr, &code, "--dir", "certs"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = racers.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
    assert!(codes == [0, 3] || codes == [3, 0], "{codes:?} {outs:?}");
    let loser = if codes[0] == 3 { &a } else { &b };
    let stderr = String::from_utf8_lossy(&outs[usize::from(codes[0] == 0)].stderr).into_owned();
    assert!(stderr.contains(INVALID), "{stderr}");
    assert!(!loser.join("certs").exists(), "the refused side wrote: {:?}", loser.listing(""));

    server.terminate();
    let server = enroll_server(&pki, &work);
    let third = Dir::new();
    let run = enroll(third.path(), &server, &code, "certs");
    run.assert_code(3);
    assert!(run.stderr().contains(INVALID), "{run}");
}

#[test]
fn expired_cancelled_unknown_and_wrong_codes_get_one_answer_and_write_nothing() {
    let pki = Pki::new();
    let work = Dir::new();
    let expired = invite(&pki, "late", &["--ttl", "1s"]);
    let cancelled = invite(&pki, "gone", &[]);
    let good = invite(&pki, "runner-7", &[]);
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke-invite", "gone"], &[]).assert_code(0);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let server = enroll_server(&pki, &work);
    // Another token id, and the right token id with another secret.
    let unknown = format!("xfer1-{}{}", "0".repeat(16), &good[22..]);
    let wrong = format!("{}{}{}", &good[..23], "0".repeat(32), &good[55..]);
    assert_eq!(wrong.len(), good.len());
    for code in [&expired, &cancelled, &unknown, &wrong] {
        let joiner = Dir::new();
        let run = enroll(joiner.path(), &server, code, "certs");
        run.assert_code(3);
        assert!(run.stderr().contains(INVALID), "{run}");
        assert!(!joiner.join("certs").exists(), "{:?}", joiner.listing(""));
    }
    let list = listing(&pki);
    assert!(list.contains("invite late") && list.contains("expired"), "{list}");
    assert!(!list.contains("invite gone"), "{list}");
    // The wrong secret did not use up the invite.
    let joiner = Dir::new();
    enroll(joiner.path(), &server, &good, "certs").assert_code(0);
}

#[test]
fn a_server_of_another_ca_gets_nothing_but_the_handshake() {
    let pki = Pki::new();
    let code = invite(&pki, "runner-7", &[]);
    // The man in the middle: a real xfer server, with enrollment, whose
    // CA is not the one the code names.
    let other = Pki::new();
    invite(&other, "bait", &[]);
    let work = Dir::new();
    let mitm = enroll_server(&other, &work);
    let joiner = Dir::new();
    let run = enroll(joiner.path(), &mitm, &code, "certs");
    run.assert_code(3);
    assert!(run.stderr().contains("does not chain to the CA in the invite code"), "{run}");
    assert!(!joiner.join("certs").exists());
    // From the server's side: a handshake the client broke off, and no
    // request at all.
    assert!(mitm.wait_for_log("refused before TLS completed"), "{}", mitm.log());
    assert!(!mitm.log().contains("enrollment"), "{}", mitm.log());
    // The code still works with the real server.
    let server = enroll_server(&pki, &work);
    enroll(joiner.path(), &server, &code, "certs").assert_code(0);
}

#[test]
fn the_certificate_has_the_invites_name_and_role_whatever_the_request_asks() {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let pki = Pki::new();
    let work = Dir::new();
    let client_code = invite(&pki, "runner-7", &[]);
    let server_code = invite(&pki, "files", &["--server", "--san", "files.example.org"]);
    let server = enroll_server(&pki, &work);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (code, want_name, want_server) in [(&client_code, "runner-7", false), (&server_code, "files", true)] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["admin".into(), "evil.example.org".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::Any,
        ];
        let csr = params.serialize_request(&key).unwrap();
        let code = xfer::enroll::code::InviteCode::parse(code).unwrap();
        let issued = rt.block_on(xfer::enroll::client::request(&server.addr, None, &code, csr.der())).expect("issued");
        let info = xfer::pki::CertInfo::from_der("issued".into(), &issued.cert).unwrap();
        assert_eq!(info.subject, want_name);
        assert!(!info.is_ca);
        if want_server {
            assert_eq!(info.role, xfer::pki::CertRole::Server);
            assert_eq!(info.names, ["files", "files.example.org", "localhost", "127.0.0.1", "::1"]);
        } else {
            assert_eq!(info.role, xfer::pki::CertRole::Client);
            assert_eq!(info.names, ["runner-7"]);
        }
    }
}

#[test]
fn renew_replaces_key_and_certificate_and_is_refused_for_revoked_or_expired_ones() {
    let pki = Pki::new();
    pki.issue(&["runner-8"]);
    invite(&pki, "someone", &[]); // serve --enroll needs the invites file
    let work = Dir::new();
    let mut server = enroll_server(&pki, &work);
    let certs = pki.certs();
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let renew = |extra: &[&str]| {
        let mut args = vec!["renew", &server.addr, "--certs", "certs"];
        args.extend_from_slice(extra);
        run_in(pki.dir.path(), &args, &[])
    };

    let (old_cert, old_key) = (read("client.pem"), read("client.key"));
    let run = renew(&[]);
    run.assert_code(0);
    assert!(run.stdout().contains("renewed client (client certificate"), "{run}");
    assert_ne!(read("client.pem"), old_cert);
    assert_ne!(read("client.key"), old_key);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);

    let key = read("client.key");
    renew(&["--keep-key"]).assert_code(0);
    assert_eq!(read("client.key"), key);

    // With --revoke-old, the certificate replaced is refused at once.
    std::fs::write(certs.join("before.pem"), read("client.pem")).unwrap();
    std::fs::write(certs.join("before.key"), read("client.key")).unwrap();
    renew(&["--revoke-old"]).assert_code(0);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
    let stale = client(&pki, "before", work.path(), "ls", &server, &[]);
    stale.assert_code(3);
    assert!(stale.stderr().contains("revoked"), "{stale}");

    // A server renews its own certificate the same way, keeping its names.
    let run = renew(&["--name", "server"]);
    run.assert_code(0);
    assert!(run.stdout().contains("renewed server (server certificate"), "{run}");

    // Revoked: refused.
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "runner-8"], &[]).assert_code(0);
    server.terminate();
    let server = enroll_server(&pki, &work);
    let run = run_in(pki.dir.path(), &["renew", &server.addr, "--certs", "certs", "--name", "runner-8"], &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("revoked"), "{run}");

    // Expired: refused before connecting, with the way out.
    let now = time::OffsetDateTime::now_utc();
    crate::revocation::issue_with_validity(&pki, "old", now - time::Duration::days(40), now - time::Duration::days(5));
    let run = run_in(pki.dir.path(), &["renew", &server.addr, "--certs", "certs", "--name", "old"], &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("keygen --invite old"), "{run}");
}

#[test]
fn servers_without_enroll_refuse_it_and_enroll_needs_the_ca_key_and_invites() {
    let pki = Pki::new();
    let work = Dir::new();
    let code = invite(&pki, "runner-7", &[]);
    let plain = XferServer::start(&pki, &work.join("root"), &[]);
    let joiner = Dir::new();
    let run = enroll(joiner.path(), &plain, &code, "certs");
    run.assert_code(3);
    assert!(run.stderr().contains("does not take enrollments") && run.stderr().contains("serve --enroll"), "{run}");
    let run = client(&pki, "client", work.path(), "renew", &plain, &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("does not take enrollments"), "{run}");
    // Transfers still work on that server.
    client(&pki, "client", work.path(), "ls", &plain, &[]).assert_code(0);

    // No invites file yet; then no CA key.
    let fresh = Pki::new();
    let run = run_in(fresh.dir.path(), &["serve", "--enroll", "--listen", "127.0.0.1:0", "--certs", "certs"], &[]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("keygen --invite"), "{run}");
    std::fs::remove_file(pki.certs().join("ca.key")).unwrap();
    let run = run_in(pki.dir.path(), &["serve", "--enroll", "--listen", "127.0.0.1:0", "--certs", "certs"], &[]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("ca.key"), "{run}");
}

#[test]
fn failed_attempts_are_rate_limited_per_source_without_using_the_invite() {
    let pki = Pki::new();
    let work = Dir::new();
    let good = invite(&pki, "runner-7", &[]);
    let server = enroll_server(&pki, &work);
    let wrong = format!("{}{}{}", &good[..23], "1".repeat(32), &good[55..]);
    let joiner = Dir::new();
    for _ in 0..5 {
        let run = enroll(joiner.path(), &server, &wrong, "certs");
        assert!(run.stderr().contains(INVALID), "{run}");
    }
    let run = enroll(joiner.path(), &server, &good, "certs");
    run.assert_code(3);
    assert!(run.stderr().contains("too many failed enrollment attempts"), "{run}");
    assert!(listing(&pki).contains("pending"), "{}", listing(&pki));
}

#[test]
fn enroll_checks_its_files_and_the_code_before_sending_anything() {
    let pki = Pki::new();
    let work = Dir::new();
    let code = invite(&pki, "runner-7", &[]);
    let server = enroll_server(&pki, &work);
    let joiner = Dir::new();
    joiner.write("certs/runner-7.pem", b"mine");
    let run = enroll(joiner.path(), &server, &code, "certs");
    run.assert_code(2);
    assert!(run.stderr().contains("refusing to overwrite") && run.stderr().contains("--force"), "{run}");
    assert_eq!(std::fs::read(joiner.join("certs/runner-7.pem")).unwrap(), b"mine");
    assert!(listing(&pki).contains("pending"), "{}", listing(&pki));

    // A malformed code is refused without being repeated.
    let typo = code.replacen('a', "g", 1);
    let run = enroll(joiner.path(), &server, &typo, "other");
    run.assert_code(2);
    assert!(!run.stderr().contains(&typo[6..40]), "{run}");

    // --force replaces; the code, also from standard input, still works.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xfer"))
        .current_dir(joiner.path())
        .args(["enroll", &server.addr, "-", "--dir", "certs", "--force"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_ne!(std::fs::read(joiner.join("certs/runner-7.pem")).unwrap(), b"mine");
}

#[test]
fn a_peer_without_a_certificate_can_only_send_one_small_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let work = Dir::new();
    let code = invite(&pki, "runner-7", &[]);
    let server = enroll_server(&pki, &work);
    let code = xfer::enroll::code::InviteCode::parse(&code).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = server.addr.clone();
    let connect = || {
        let config = xfer::enroll::tls::pinned_client_config(code.ca_sha256).unwrap();
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
        }
    };
    rt.block_on(async {
        // A header announcing a 4 MiB answer (the largest message type) is
        // refused from the header alone, and the connection closed.
        let mut tls = connect().await;
        tls.write_all(&[0x58, 0, 0x40, 0, 0]).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        // A transfer request on this ALPN is not one of its messages.
        let mut tls = connect().await;
        tls.write_all(&xfer::protocol::preamble()).await.unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    });
    assert!(server.wait_for_log("other direction"), "{}", server.log());
    // The server goes on: the code still works.
    let joiner = Dir::new();
    enroll(joiner.path(), &server, &code.reveal(), "certs").assert_code(0);
}

#[test]
fn every_certificate_enrollment_and_renewal_issued_is_revoked_by_name() {
    let pki = Pki::new();
    let work = Dir::new();
    let code = invite(&pki, "runner-7", &[]);
    let mut server = enroll_server(&pki, &work);
    let joiner = Dir::new();
    enroll(joiner.path(), &server, &code, "certs").assert_code(0);
    // Renewed twice without --revoke-old: three valid certificates, each
    // kept in its own folder, none of them in the CA's folder.
    let keep = |n: usize| {
        let to = joiner.join(&format!("copy{n}"));
        std::fs::create_dir_all(&to).unwrap();
        for f in ["ca.pem", "runner-7.pem", "runner-7.key"] {
            std::fs::copy(joiner.join("certs").join(f), to.join(f)).unwrap();
        }
    };
    keep(0);
    for n in 1..3 {
        let run = run_in(joiner.path(), &["renew", &server.addr, "--certs", "certs", "--name", "runner-7"], &[]);
        run.assert_code(0);
        keep(n);
    }
    assert!(!pki.certs().join("runner-7.pem").exists());
    let list = listing(&pki);
    assert_eq!(list.matches("runner-7 (client)  names runner-7").count(), 3, "{list}");

    let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "runner-7"], &[]);
    run.assert_code(0);
    assert!(run.stdout().contains("revoked 3 certificate(s)"), "{run}");
    // Renewal is refused at once, before any reload...
    let run = run_in(joiner.path(), &["renew", &server.addr, "--certs", "copy2", "--name", "runner-7"], &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("revoked"), "{run}");
    // ...and after a restart every copy is refused.
    server.terminate();
    let server = enroll_server(&pki, &work);
    for n in 0..3 {
        let dir = format!("copy{n}");
        let run = run_in(joiner.path(), &["ls", &server.addr, "--certs", &dir, "--name", "runner-7"], &[]);
        run.assert_code(3);
    }
}

#[test]
fn concurrent_revocations_all_land_in_the_list() {
    let pki = Pki::new();
    let names: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
    pki.issue(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new(env!("CARGO_BIN_EXE_xfer"))
                .current_dir(pki.dir.path())
                .args(["keygen", "--dir", "certs", "--revoke", n])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "client"], &[]);
    assert!(run.stdout().contains("now lists 13 certificate(s)"), "{run}");
}

#[test]
fn only_this_cas_own_certificates_are_renewed_and_not_without_end() {
    let pki = Pki::new();
    invite(&pki, "someone", &[]);
    // Another CA, trusted through a bundle (a rotation, a partner).
    let other = Pki::new();
    other.issue(&["partner"]);
    let bundle = [pki.certs().join("ca.pem"), other.certs().join("ca.pem")]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    std::fs::write(pki.certs().join("ca.pem.both"), &bundle).unwrap();
    let work = Dir::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xfer"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--enroll", "--root"]).arg(work.join("root"));
    cmd.args(pki.id_args("server")).arg("--ca").arg(pki.certs().join("ca.pem.both"));
    // --ca points at the bundle; ca.key and invites.json stay beside it.
    let server = XferServer::spawn(cmd, &work.join("root"));
    std::fs::write(other.certs().join("ca.pem"), &bundle).unwrap();
    let run = run_in(other.dir.path(), &["renew", &server.addr, "--certs", "certs", "--name", "partner"], &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("issued by another CA"), "{run}");

    // This CA's own client: renewed, up to the hourly limit.
    for _ in 0..10 {
        run_in(pki.dir.path(), &["renew", &server.addr, "--certs", "certs", "--keep-key"], &[]).assert_code(0);
    }
    let run = run_in(pki.dir.path(), &["renew", &server.addr, "--certs", "certs", "--keep-key"], &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("renewals an hour"), "{run}");
}

/// A hostile renewal server with a valid server certificate of the same
/// CA: answers one renewal with `answer(client_cert, csr)`.
fn hostile_renewer(
    pki: &Pki,
    answer: impl FnOnce(Vec<u8>, Vec<u8>) -> xfer::protocol::enroll::Response + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = xfer::tls::Identity::load(&xfer::IdentityPaths::in_dir(&pki.certs(), "server")).unwrap();
    let cas = vec![id.chain[0].clone()];
    let config = xfer::enroll::tls::server_config(&id, &cas).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ca_pem = std::fs::read(pki.certs().join("ca.pem")).unwrap();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let req = loop {
                n += tls.read(&mut buf[n..]).await.unwrap();
                if let Some((req, _)) = xfer::protocol::enroll::Request::decode(&buf[..n]).unwrap() {
                    break req;
                }
            };
            let xfer::protocol::enroll::Request::Renew { csr, .. } = req else { panic!("{req:?}") };
            let client_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            let mut response = answer(client_cert, csr);
            if let xfer::protocol::enroll::Response::Issued { cas, .. } = &mut response {
                use rustls_pki_types::pem::PemObject;
                *cas = vec![rustls_pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap().to_vec()];
            }
            tls.write_all(&response.encode()).await.unwrap();
            let _ = tls.shutdown().await;
        });
    });
    (addr, handle)
}

#[test]
fn renew_checks_the_answer_of_a_hostile_server_before_writing() {
    use xfer::protocol::enroll::Response;
    let pki = Pki::new();
    let certs = pki.certs();
    let before = std::fs::read(certs.join("client.pem")).unwrap();
    // The current certificate sent back, as if renewed.
    let (addr, fake) = hostile_renewer(&pki, |cert, _| Response::Issued { cert, cas: vec![], crl: None });
    let run = run_in(pki.dir.path(), &["renew", &addr, "--certs", "certs", "--keep-key"], &[]);
    fake.join().unwrap();
    assert_ne!(run.code(), 0, "{run}");
    assert!(run.stderr().contains("the current certificate"), "{run}");
    // A real new certificate (the test holds the CA key), with a list
    // that is not the CA's: nothing is written.
    let ca_dir = certs.clone();
    let (addr, fake) = hostile_renewer(&pki, move |_, csr| {
        use rcgen::{CertificateSigningRequestParams, Issuer, KeyPair};
        let key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(), key).unwrap();
        let req = CertificateSigningRequestParams::from_der(&csr.into()).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&req.public_key, &issuer).unwrap();
        Response::Issued { cert: cert.der().to_vec(), cas: vec![], crl: Some(b"not a revocation list".to_vec()) }
    });
    let run = run_in(pki.dir.path(), &["renew", &addr, "--certs", "certs", "--keep-key"], &[]);
    fake.join().unwrap();
    assert_ne!(run.code(), 0, "{run}");
    assert!(run.stderr().contains("revocation list in the answer"), "{run}");
    assert!(!certs.join("ca.crl").exists());
    assert_eq!(std::fs::read(certs.join("client.pem")).unwrap(), before, "nothing was written");
}

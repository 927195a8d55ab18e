//! Revocation (`keygen --revoke`, CRLs) and certificates outside their
//! validity period: refused, with messages that say so and give the dates.

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use time::{Duration, OffsetDateTime};

use crate::support::*;

#[test]
fn revoked_clients_are_refused_and_earlier_revocations_are_kept() {
    let pki = Pki::new();
    pki.issue(&["runner-1", "runner-2"]);
    for name in ["runner-1", "runner-2"] {
        let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", name], &[]);
        run.assert_code(0);
        assert!(run.stdout().contains("revoked"), "{run}");
    }
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
    for name in ["runner-1", "runner-2"] {
        let run = client(&pki, name, work.path(), "ls", &server, &[]);
        run.assert_code(3);
        assert!(run.stderr().contains("revoked"), "{run}");
    }
    assert!(server.wait_for_log("revoked (it is listed in the CRL)"), "{}", server.log());
}

#[test]
fn a_revoked_server_is_refused_by_clients_that_have_the_crl() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "server"], &[]).assert_code(0);
    let run = client(&pki, "client", work.path(), "ls", &server, &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("the server's certificate is revoked"), "{run}");
}

/// Writes `certs/NAME.pem` and `.key` signed by the test CA, valid only
/// between the two instants given.
pub(crate) fn issue_with_validity(pki: &Pki, name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) {
    let certs = pki.certs();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(certs.join("ca.pem")).unwrap(), ca_key).unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned(), "localhost".into(), "127.0.0.1".into()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(certs.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(certs.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_with_their_dates() {
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    issue_with_validity(&pki, "old", now - Duration::days(400), now - Duration::days(35));
    issue_with_validity(&pki, "early", now + Duration::days(3), now + Duration::days(300));
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);

    let expired_on = (now - Duration::days(35)).date().to_string();
    let old = client(&pki, "old", work.path(), "ls", &server, &[]);
    old.assert_code(3);
    assert!(old.stderr().contains(&format!("expired on {expired_on}")), "{old}");
    assert!(server.wait_for_log(&format!("expired on {expired_on}")), "{}", server.log());

    let early = client(&pki, "early", work.path(), "ls", &server, &[]);
    early.assert_code(3);
    assert!(early.stderr().contains("is not valid until"), "{early}");
    assert!(server.wait_for_log("not valid until"), "{}", server.log());

    // A server refuses to start with a certificate outside its validity
    // (every client would fail), and says why, with the dates.
    let server_dir = Dir::new();
    let root = server_dir.join("root");
    let certs = pki.certs().display().to_string();
    for (name, want) in [("old", format!("expired on {expired_on}")), ("early", "is not valid until".to_owned())] {
        let args =
            ["serve", "--listen", "127.0.0.1:0", "--root", root.to_str().unwrap(), "--certs", &certs, "--name", name];
        let run = run_in(server_dir.path(), &args, &[]);
        run.assert_code(1);
        assert!(run.stderr().contains(&want) && !run.stderr().contains("listening on"), "{run}");
    }
}

#[test]
fn a_crl_signed_by_another_ca_is_refused_at_start() {
    let pki = Pki::new();
    let other = Pki::new();
    run_in(other.dir.path(), &["keygen", "--dir", "certs", "--revoke", "client"], &[]).assert_code(0);
    let work = Dir::new();
    let crl = other.certs().join("ca.crl").display().to_string();
    let args = ["serve", "--listen", "127.0.0.1:0", "--root", "root", "--crl", &crl];
    let mut all: Vec<&str> = args.to_vec();
    let ids = pki.id_args("server");
    all.extend(ids.iter().map(String::as_str));
    let run = run_in(work.path(), &all, &[]);
    run.assert_code(1);
    assert!(run.stderr().contains("it would revoke nothing"), "{run}");
    // Clients refuse it too.
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let run = client(&pki, "client", work.path(), "ls", &server, &["--crl", &crl]);
    run.assert_code(1);
    assert!(run.stderr().contains("it would revoke nothing"), "{run}");
}

#[test]
fn revocation_and_a_narrower_policy_reach_open_sessions_after_sighup() {
    use tokio::io::AsyncWriteExt;
    use xfer::protocol::{ErrorCode, FileHeader, Frame, Timestamp, WirePath};
    let pki = Pki::new();
    pki.issue(&["runner-1"]);
    let work = Dir::new();
    let policy = work.write("policy.toml", b"[[rule]]\npeer = \"*\"\nallow = [\"read\", \"write\"]\n");
    let server = XferServer::start(&pki, &work.join("root"), &["--policy", policy.to_str().unwrap()]);
    let file = |name: &str| {
        let h = FileHeader::new(WirePath::parse(name).unwrap(), 2, 0o644, Timestamp::default());
        let data = bytes::Bytes::from_static(b"hi");
        encode(&[Frame::File(h), Frame::Data(data), Frame::End { blake3: *blake3::hash(b"hi").as_bytes() }])
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Two sessions open while everything is allowed; each stores a file.
        let mut sessions = Vec::new();
        for (name, path) in [("runner-1", "before-1"), ("client", "before-2")] {
            let (mut r, mut w) = raw_connect(&pki, name, &server).await;
            w.write_all(&xfer::protocol::preamble()).await.unwrap();
            w.write_all(&file(path)).await.unwrap();
            w.flush().await.unwrap();
            r.read_preamble(std::time::Duration::from_secs(10)).await.unwrap();
            assert!(matches!(r.read_frame().await.unwrap(), Some(Frame::Stored { .. })));
            sessions.push((r, w));
        }
        // runner-1 is revoked and writing is no longer granted; reload.
        run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "runner-1"], &[]).assert_code(0);
        std::fs::write(&policy, "[[rule]]\npeer = \"*\"\nallow = [\"read\"]\n").unwrap();
        let hup = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
        assert!(hup.success());
        assert!(server.wait_for_log("reloaded certificates and policy"), "{}", server.log());

        let (mut r, mut w) = sessions.remove(0);
        w.write_all(&file("after-1")).await.unwrap();
        w.flush().await.unwrap();
        match r.read_frame().await.unwrap() {
            Some(Frame::Error { code: ErrorCode::NotAdmitted, message }) => {
                assert!(message.contains("no longer accepted") && message.contains("revoked"), "{message}")
            }
            other => panic!("a revoked client's open session must be ended: {other:?}"),
        }
        let (mut r, mut w) = sessions.remove(0);
        w.write_all(&file("after-2")).await.unwrap();
        w.flush().await.unwrap();
        match r.read_frame().await.unwrap() {
            Some(Frame::Error { code: ErrorCode::Denied, .. }) => {}
            other => panic!("the narrower policy applies to an open session: {other:?}"),
        }
    });
    assert!(work.join("root/before-1").exists() && work.join("root/before-2").exists());
    assert!(!work.join("root/after-1").exists() && !work.join("root/after-2").exists());
}

#[test]
fn crl_follows_an_explicit_ca_and_a_bogus_crl_is_refused() {
    let pki = Pki::new();
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "client"], &[]).assert_code(0);
    let work = Dir::new();
    let c = pki.certs();
    let (cert, key, ca) = (c.join("server.pem"), c.join("server.key"), c.join("ca.pem"));
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--root", "root", "--certs", "/nonexistent"];
    let explicit = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), "--ca", ca.to_str().unwrap()];
    args.extend(explicit);
    let mut cmd = std::process::Command::new(XFER);
    cmd.current_dir(work.path()).args(&args);
    let server = XferServer::spawn(cmd, &work.join("root"));
    // ca.crl beside the explicit --ca is used: the revoked client is refused.
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(3);
    drop(server);

    let bogus = ["--crl", ca.to_str().unwrap()];
    let run = run_in(work.path(), &[&args[..], &bogus[..]].concat(), &[]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("no X509 CRL"), "{run}");
}

#[test]
fn renewing_with_a_new_key_revokes_the_old_certificate() {
    let pki = Pki::new();
    pki.issue(&["runner-3"]);
    let old = Dir::new();
    for f in ["runner-3.pem", "runner-3.key", "ca.pem"] {
        std::fs::create_dir_all(old.join("certs")).unwrap();
        std::fs::copy(pki.certs().join(f), old.join(&format!("certs/{f}"))).unwrap();
    }
    let renew = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "runner-3"], &[]);
    renew.assert_code(0);
    assert!(renew.stdout().contains("ca.crl"), "{renew}");
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "runner-3", work.path(), "ls", &server, &[]).assert_code(0);
    let stale = Pki { dir: old };
    client(&stale, "runner-3", work.path(), "ls", &server, &[]).assert_code(3);
}

#[test]
fn a_certificate_replaced_with_keep_key_is_still_revoked_by_name() {
    let pki = Pki::new();
    pki.issue(&["bob"]);
    let certs = pki.certs();
    std::fs::create_dir_all(certs.join("old")).unwrap();
    for f in ["bob.pem", "bob.key"] {
        std::fs::copy(certs.join(f), certs.join("old").join(f)).unwrap();
    }
    std::fs::copy(certs.join("ca.pem"), certs.join("old/ca.pem")).unwrap();
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "bob", "--keep-key"], &[]).assert_code(0);
    let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--revoke", "bob"], &[]);
    run.assert_code(0);
    assert!(run.stdout().contains("revoked 2 certificate(s)"), "{run}");
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    std::fs::copy(certs.join("ca.crl"), certs.join("old/ca.crl")).unwrap();
    let old = certs.join("old").display().to_string();
    let run = run_in(work.path(), &["ls", &server.addr, "--certs", &old, "--name", "bob"], &[]);
    run.assert_code(3);
}

//! `xfer keygen`: the files, their modes, and never overwriting by accident.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::*;

#[test]
fn keygen_writes_ca_and_peers_with_private_keys_0600() {
    let work = Dir::new();
    fs::create_dir(work.join("certs")).unwrap();
    let run = run_in(work.path(), &["keygen", "--san", "files.example.org", "--days", "30"], &[]);
    run.assert_code(0);
    for f in ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"] {
        let mode = fs::metadata(work.join(&format!("certs/{f}"))).unwrap().permissions().mode() & 0o777;
        if f.ends_with(".key") {
            assert_eq!(mode, 0o600, "{f}");
        }
        assert!(run.stdout().contains(&format!("wrote certs/{f}")), "{run}");
    }
    assert!(run.stdout().contains("sha256 ") && run.stdout().contains("expires "), "{run}");

    let names = xfer::pki::CertInfo::read(&work.join("certs/server.pem")).unwrap().names;
    for n in ["server", "files.example.org", "localhost"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

#[test]
fn keygen_refuses_to_overwrite_and_then_writes_nothing() {
    let work = Dir::new();
    fs::create_dir(work.join("certs")).unwrap();
    run_in(work.path(), &["keygen"], &[]).assert_code(0);
    let before = fs::read(work.join("certs/client.key")).unwrap();
    // runner-1 is new, but client exists: nothing at all may be written.
    let run = run_in(work.path(), &["keygen", "runner-1", "client"], &[]);
    run.assert_code(2);
    assert!(run.stderr().contains("certs/client.pem") && run.stderr().contains("--force"), "{run}");
    assert!(!work.join("certs/runner-1.pem").exists() && !work.join("certs/runner-1.key").exists());
    assert_eq!(fs::read(work.join("certs/client.key")).unwrap(), before);

    run_in(work.path(), &["keygen", "client", "--force"], &[]).assert_code(0);
    assert_ne!(fs::read(work.join("certs/client.key")).unwrap(), before);
}

#[test]
fn a_peer_issued_later_by_the_same_ca_can_connect() {
    let pki = Pki::new();
    let ca_before = fs::read(pki.certs().join("ca.pem")).unwrap();
    pki.issue(&["runner-7"]);
    assert_eq!(fs::read(pki.certs().join("ca.pem")).unwrap(), ca_before, "the CA is reused, not replaced");
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "runner-7", work.path(), "ls", &server, &[]).assert_code(0);
}

#[test]
fn keygen_rejects_unsafe_names() {
    let work = Dir::new();
    for bad in ["../evil", "ca", ".hidden", "a/b"] {
        run_in(work.path(), &["keygen", bad], &[]).assert_code(2);
    }
    assert!(!work.join("certs").exists() || work.listing("certs").is_empty());
}

#[test]
fn keygen_list_shows_names_fingerprints_expiry_and_warns_before_expiry() {
    let pki = Pki::new();
    let short = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "runner-9", "--days", "10"], &[]);
    short.assert_code(0);
    let list = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--list"], &[]);
    list.assert_code(0);
    let out = list.stdout();
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("certs/ca.pem") && first.contains("(CA)"), "{list}");
    let client_line = out.lines().find(|l| l.starts_with("certs/client.pem")).unwrap();
    assert!(client_line.contains("client (client)  names client  sha256 "), "{list}");
    let server_line = out.lines().find(|l| l.starts_with("certs/server.pem")).unwrap();
    assert!(server_line.contains("server (server)  names server,localhost,127.0.0.1,::1  sha256 "), "{list}");
    assert!(out.contains("warning: certificate certs/runner-9.pem expires in"), "{list}");
    assert!(!out.contains("certs/client.pem expires in"), "{list}");

    // Every command that loads the short-lived certificate warns too.
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let ls = client(&pki, "runner-9", work.path(), "ls", &server, &[]);
    ls.assert_code(0);
    assert!(ls.stderr().contains("runner-9.pem expires in"), "{ls}");
    let quiet = client(&pki, "client", work.path(), "ls", &server, &[]);
    assert!(!quiet.stderr().contains("expires"), "{quiet}");
}

#[test]
fn renew_keeps_names_changes_the_key_unless_asked_and_the_peer_still_connects() {
    let pki = Pki::new();
    run_in(
        pki.dir.path(),
        &["keygen", "--dir", "certs", "--server", "r5", "--san", "r5.example.org", "--days", "5"],
        &[],
    )
    .assert_code(0);
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "runner-5", "--days", "5"], &[]).assert_code(0);
    let certs = pki.certs();
    let (key0, cert0) = (fs::read(certs.join("runner-5.key")).unwrap(), fs::read(certs.join("runner-5.pem")).unwrap());

    let renewed = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "runner-5", "--days", "90"], &[]);
    renewed.assert_code(0);
    assert_ne!(fs::read(certs.join("runner-5.key")).unwrap(), key0, "a new key by default");
    // A server keeps its names and role.
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "r5"], &[]).assert_code(0);
    let list = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--list"], &[]);
    let line = list.stdout().lines().find(|l| l.starts_with("certs/r5.pem")).unwrap().to_owned();
    assert!(line.contains("(server)") && line.contains("r5.example.org"), "{list}");
    let line = list.stdout().lines().find(|l| l.starts_with("certs/runner-5.pem")).unwrap().to_owned();
    assert!(
        line.contains("(client)  names runner-5  ") && !list.stdout().contains("runner-5.pem expires in"),
        "{list}"
    );
    // --renew keeps the role: it cannot turn a client into a server.
    let turned = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "runner-5", "--server"], &[]);
    turned.assert_code(2);
    assert!(turned.stderr().contains("keeps its role"), "{turned}");

    let key1 = fs::read(certs.join("runner-5.key")).unwrap();
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "runner-5", "--keep-key"], &[]).assert_code(0);
    assert_eq!(fs::read(certs.join("runner-5.key")).unwrap(), key1, "--keep-key keeps it");
    assert_ne!(fs::read(certs.join("runner-5.pem")).unwrap(), cert0);

    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "runner-5", work.path(), "ls", &server, &[]).assert_code(0);
}

#[test]
fn ca_days_and_ed25519_keys() {
    let work = Dir::new();
    fs::create_dir(work.join("certs")).unwrap();
    run_in(work.path(), &["keygen", "--ca-days", "100", "--key-type", "ed25519"], &[]).assert_code(0);
    let list = run_in(work.path(), &["keygen", "--list"], &[]);
    let ca_line = list.stdout().lines().next().unwrap().to_owned();
    let in_100_days = (time::OffsetDateTime::now_utc() + time::Duration::days(100)).date().to_string();
    assert!(ca_line.contains(&format!("expires {in_100_days}")), "{list}");
    assert!(fs::read_to_string(work.join("certs/client.key")).unwrap().contains("PRIVATE KEY"));
    // PKCS#8 v1, which OpenSSL 3.0 (and so curl and the like) can read.
    for key in ["ca.key", "client.key", "server.key"] {
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(work.join(&format!("certs/{key}")))
            .output()
            .expect("openssl is installed (.ci/run installs it)");
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Ed25519 identities work end to end over TLS 1.3.
    let pki = Pki { dir: work };
    let files = Dir::new();
    let server = XferServer::start(&pki, &files.join("root"), &[]);
    files.write("f", b"ed25519");
    client(&pki, "client", files.path(), "push", &server, &["f"]).assert_code(0);
    assert_eq!(fs::read(files.join("root/f")).unwrap(), b"ed25519");
}

#[test]
fn private_keys_readable_by_others_draw_a_warning_or_with_strict_a_refusal() {
    let pki = Pki::new();
    let key = pki.certs().join("client.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let warned = client(&pki, "client", work.path(), "ls", &server, &[]);
    warned.assert_code(0);
    assert!(
        warned.stderr().contains("readable by other users (mode 0644)") && warned.stderr().contains("chmod 600"),
        "{warned}"
    );
    let strict = client(&pki, "client", work.path(), "ls", &server, &["--strict"]);
    assert_ne!(strict.code(), 0);
    assert!(strict.stderr().contains("--strict"), "{strict}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let clean = client(&pki, "client", work.path(), "ls", &server, &["--strict"]);
    clean.assert_code(0);
    assert!(!clean.stderr().contains("readable"), "{clean}");
}

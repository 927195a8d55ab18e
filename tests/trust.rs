//! Who may connect: each test first shows the allowed peer works (a positive
//! control), then that each bad peer is refused and nothing was written.

use std::fs;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

#[test]
fn a_client_from_another_ca_is_refused_with_exit_3_and_writes_nothing() {
    let pki = Pki::new();
    let other = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("f.txt", b"data");
    client(&pki, "client", work.path(), "push", &server, &["f.txt", "--to", "ok"]).assert_code(0);

    // The foreign client trusts the real CA (so it accepts the server) but
    // its own certificate is signed by another one.
    let (oc, ca) = (other.certs(), pki.certs());
    let (cert, key, ca) = (oc.join("client.pem"), oc.join("client.key"), ca.join("ca.pem"));
    let args = [
        "push",
        &server.addr,
        "f.txt",
        "--to",
        "bad",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ];
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("not signed by the CA the server trusts"), "{run}");
    assert!(!work.join("root/bad").exists());
    assert!(server.wait_for_log("client's certificate was rejected"), "{}", server.log());
}

#[test]
fn a_server_from_another_ca_is_refused_by_the_client() {
    let pki = Pki::new();
    let other = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&other, &work.join("root"), &[]);
    let run = client(&pki, "client", work.path(), "ls", &server, &[]);
    run.assert_code(3);
    assert!(run.stderr().contains("not signed by the CA"), "{run}");
}

#[test]
fn a_server_certificate_that_does_not_name_host_is_refused() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    // Control: the certificate names `server` (and 127.0.0.1, the HOST used).
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
    client(&pki, "client", work.path(), "ls", &server, &["--server-name", "server"]).assert_code(0);
    let run = client(&pki, "client", work.path(), "ls", &server, &["--server-name", "files.example.org"]);
    run.assert_code(3);
    let err = run.stderr();
    assert!(err.contains("does not name 'files.example.org' (it names server, localhost, 127.0.0.1, ::1)"), "{run}");

    // Both hints work when followed: --server-name with a name it has ...
    assert!(err.contains("--server-name server"), "{run}");
    client(&pki, "client", work.path(), "ls", &server, &["--server-name", "server"]).assert_code(0);
    // ... and the command printed, run on the CA's machine, then SIGHUP.
    let hint = err.split('`').nth(1).expect("a command in backticks");
    assert_eq!(hint, "xfer keygen --renew server --keep-key --san files.example.org", "{run}");
    let args: Vec<&str> = hint.split(' ').skip(1).collect();
    run_in(pki.dir.path(), &args, &[]).assert_code(0);
    std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(server.wait_for_log("reloaded"), "{}", server.log());
    let run = client(&pki, "client", work.path(), "ls", &server, &["--server-name", "files.example.org"]);
    run.assert_code(0);
    // A client certificate takes no --san, renewed or not.
    let run = run_in(pki.dir.path(), &["keygen", "--renew", "client", "--san", "x.example.org"], &[]);
    run.assert_code(2);
    assert!(run.stderr().contains("--san applies to server certificates only"), "{run}");
}

#[test]
fn allow_admits_only_listed_names() {
    let pki = Pki::new();
    pki.issue(&["runner-7", "runner-8"]);
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--allow", "runner-7"]);
    work.write("f.txt", b"data");
    client(&pki, "runner-7", work.path(), "push", &server, &["f.txt", "--to", "ok"]).assert_code(0);
    assert!(work.join("root/ok/f.txt").exists());

    for name in ["runner-8", "client"] {
        let run = client(&pki, name, work.path(), "push", &server, &["f.txt", "--to", name]);
        run.assert_code(3);
        assert!(run.stderr().contains(&format!("certificate '{name}' is not allowed on this server")), "{run}");
        // The allow list is the server's business, not the refused peer's.
        assert!(!run.stderr().contains("runner-7"), "{run}");
        assert!(!work.join(&format!("root/{name}")).exists());
    }
}

#[test]
fn read_only_refuses_push_and_rm_but_serves_pull_and_ls() {
    let pki = Pki::new();
    let work = Dir::new();
    work.write("root/keep.txt", b"keep");
    let server = XferServer::start(&pki, &work.join("root"), &["--read-only"]);
    client(&pki, "client", work.path(), "pull", &server, &["keep.txt", "--out", "got"]).assert_code(0);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);

    work.write("new.txt", b"new");
    let push = client(&pki, "client", work.path(), "push", &server, &["new.txt"]);
    push.assert_code(4);
    assert!(push.stderr().contains("read-only"), "{push}");
    assert!(!work.join("root/new.txt").exists());
    let rm = client(&pki, "client", work.path(), "rm", &server, &["keep.txt"]);
    rm.assert_code(4);
    assert!(work.join("root/keep.txt").exists());
    assert_eq!(fs::read_dir(work.join("root/.xfer/tmp")).unwrap().count(), 0);
}

#[test]
fn identity_flags_can_come_from_the_environment() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let certs = pki.certs();
    let env = [
        ("XFER_CERT", certs.join("client.pem")),
        ("XFER_KEY", certs.join("client.key")),
        ("XFER_CA", certs.join("ca.pem")),
    ];
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.display().to_string())).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_in(work.path(), &["ls", &server.addr], &env).assert_code(0);
    // And without any identity, the error says how to get one.
    let none = run_in(work.path(), &["ls", &server.addr], &[]);
    assert_ne!(none.code(), 0);
    assert!(none.stderr().contains("xfer keygen"), "{none}");
}

/// A TLS client with no certificate at all must not get past the server.
#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let result: std::io::Result<Vec<u8>> = rt.block_on(async {
        let ids = xfer::IdentityPaths::in_dir(&pki.certs(), "client");
        let id = xfer::tls::Identity::load(&ids).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(id.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![xfer::protocol::ALPN.to_vec()];
        let tcp = tokio::net::TcpStream::connect(&server.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
        tls.write_all(&xfer::protocol::preamble()).await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok(buf)
    });
    match result {
        Err(e) => {
            assert!(e.to_string().contains("CertificateRequired") || e.to_string().contains("certificate"), "{e}")
        }
        Ok(bytes) => panic!("server answered a client without certificate with {} bytes", bytes.len()),
    }
    assert!(server.wait_for_log("presented no certificate"), "{}", server.log());
}

#[test]
fn a_client_that_does_not_negotiate_the_xfer_alpn_is_refused() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: std::io::Result<Vec<u8>> = rt.block_on(async {
        let ids = xfer::IdentityPaths::in_dir(&pki.certs(), "client");
        let id = xfer::tls::Identity::load(&ids).unwrap();
        let mut cfg = (*id.client_config().unwrap()).clone();
        cfg.alpn_protocols.clear(); // a valid certificate, but no protocol offered
        let tcp = tokio::net::TcpStream::connect(&server.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?;
        tls.write_all(&xfer::protocol::preamble()).await?;
        tls.flush().await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok(buf)
    });
    assert!(got.map(|b| b.is_empty()).unwrap_or(true), "the server must not answer");
    assert!(server.wait_for_log("did not negotiate the xfer/1 protocol"), "{}", server.log());
}

#[test]
fn pem_text_is_taken_from_the_environment_but_refused_on_the_command_line() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let read = |f: &str| std::fs::read_to_string(pki.certs().join(f)).unwrap();
    let (cert, key, ca) = (read("client.pem"), read("client.key"), read("ca.pem"));
    // The way CI systems hand over secrets: the PEM text in the variable.
    let env = [("XFER_CERT", cert.as_str()), ("XFER_KEY", key.as_str()), ("XFER_CA", ca.as_str())];
    run_in(work.path(), &["ls", &server.addr], &env).assert_code(0);

    let (k, c, a) = (format!("--key={key}"), format!("--cert={cert}"), format!("--ca={ca}"));
    let leaked = run_in(work.path(), &["ls", &server.addr, &k, &c, &a], &[]);
    leaked.assert_code(2);
    assert!(leaked.stderr().contains("$XFER_"), "{leaked}");
}

#[test]
fn help_never_shows_secret_environment_values() {
    let work = Dir::new();
    let env = [("XFER_KEY", "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n")];
    for cmd in [&["push", "--help"][..], &["serve", "--help"][..]] {
        let run = run_in(work.path(), cmd, &env);
        run.assert_code(0);
        assert!(!run.stdout().contains("secret-key-material"), "{run}");
    }
}

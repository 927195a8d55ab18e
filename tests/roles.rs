//! Certificate roles: keygen issues server certificates (serverAuth) and
//! client certificates (clientAuth), and each side refuses a peer whose
//! certificate has the wrong one. Certificates made before roles still
//! work, with a warning that names the fix.

use crate::support::*;
use xfer::pki::{CertInfo, CertRole};

#[test]
fn keygen_gives_each_certificate_one_role_and_only_servers_extra_names() {
    let work = Dir::new();
    std::fs::create_dir(work.join("certs")).unwrap();
    run_in(work.path(), &["keygen", "--san", "files.example.org"], &[]).assert_code(0);
    run_in(work.path(), &["keygen", "runner-7"], &[]).assert_code(0);
    run_in(work.path(), &["keygen", "--server", "edge", "--san", "10.1.2.3"], &[]).assert_code(0);
    let info = |n: &str| CertInfo::read(&work.join(&format!("certs/{n}.pem"))).unwrap();

    let server = info("server");
    assert_eq!(server.role, CertRole::Server);
    assert_eq!(server.names, ["server", "files.example.org", "localhost", "127.0.0.1", "::1"]);
    for client_name in ["client", "runner-7"] {
        let c = info(client_name);
        assert_eq!(c.role, CertRole::Client, "{client_name}");
        assert_eq!(c.names, [client_name], "a client certificate names only its holder");
        assert_eq!(c.subject, client_name);
    }
    let edge = info("edge");
    assert_eq!(edge.role, CertRole::Server);
    assert_eq!(edge.names, ["edge", "10.1.2.3", "localhost", "127.0.0.1", "::1"]);

    let list = run_in(work.path(), &["keygen", "--list"], &[]);
    for (file, role) in [("ca", "CA"), ("server", "server"), ("client", "client"), ("runner-7", "client")] {
        let line = list.stdout().lines().find(|l| l.starts_with(&format!("certs/{file}.pem"))).unwrap().to_owned();
        assert!(line.contains(&format!("({role})")), "{file}: {list}");
    }
}

#[test]
fn san_with_client_names_is_a_usage_error_that_writes_nothing() {
    let work = Dir::new();
    std::fs::create_dir(work.join("certs")).unwrap();
    run_in(work.path(), &["keygen"], &[]).assert_code(0);
    let before = work.listing("certs");
    assert!(before.len() >= 6, "{before:?}");
    let run = run_in(work.path(), &["keygen", "runner-1", "--san", "r1.example.org"], &[]);
    run.assert_code(2);
    assert!(run.stderr().contains("--san applies to server certificates only") && run.stderr().contains("--server"));
    let run = run_in(work.path(), &["keygen", "--client", "--san", "r1.example.org"], &[]);
    run.assert_code(2);
    assert_eq!(work.listing("certs"), before, "nothing written");
}

/// A runner's key (a CI secret) must not be able to pose as the server:
/// every client command refuses a server presenting a client certificate.
#[test]
fn a_server_presenting_a_client_certificate_is_refused_by_every_command() {
    let pki = Pki::new();
    pki.issue(&["runner-7"]);
    let work = Dir::new();
    work.write("a.txt", b"secret build output");

    // Positive control: the real server works.
    let real = XferServer::start(&pki, &work.join("real"), &[]);
    client(&pki, "client", work.path(), "push", &real, &["a.txt"]).assert_code(0);

    let impostor = XferServer::start_as(&pki, "runner-7", &work.join("fake"), &[]);
    assert!(impostor.log().contains("is a client certificate"), "serve warns: {}", impostor.log());
    std::fs::create_dir_all(work.join("fake/x")).unwrap();
    std::fs::write(work.join("fake/x/b.txt"), b"planted").unwrap();
    for (op, rest) in
        [("push", vec!["a.txt"]), ("pull", vec!["x/b.txt", "--out", "got"]), ("ls", vec![]), ("rm", vec!["x/b.txt"])]
    {
        let run = client(&pki, "client", work.path(), op, &impostor, &rest);
        run.assert_code(3);
        assert!(run.stderr().contains("the server presented a client certificate (runner-7)"), "{op}: {run}");
    }
    assert!(!work.join("fake/a.txt").exists() && !work.join("got").exists());
    assert!(work.join("fake/x/b.txt").exists());
}

#[test]
fn a_server_certificate_presented_as_a_client_is_refused_by_the_server() {
    let pki = Pki::new();
    pki.issue_server(&["edge"]);
    let work = Dir::new();
    work.write("a.txt", b"x");
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);

    for op in ["push", "ls"] {
        let rest: &[&str] = if op == "push" { &["a.txt"] } else { &[] };
        let run = client(&pki, "edge", work.path(), op, &server, rest);
        run.assert_code(3);
        assert!(run.stderr().contains("not a client certificate"), "{run}");
    }
    assert!(!work.join("root/a.txt").exists());
    assert!(server.wait_for_log("the client presented a server certificate (edge)"), "{}", server.log());
}

#[test]
fn certificates_from_before_roles_still_work_warn_and_renew_with_a_chosen_role() {
    let pki = Pki::new();
    pki.issue_dual_use("old-runner");
    pki.issue_dual_use("old-server");
    let work = Dir::new();
    let server = XferServer::start_as(&pki, "old-server", &work.join("root"), &[]);
    assert!(server.wait_for_log("xfer keygen --renew old-server"), "{}", server.log());

    let ls = client(&pki, "old-runner", work.path(), "ls", &server, &[]);
    ls.assert_code(0);
    let stderr = ls.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("valid for both server and client")).collect();
    assert_eq!(warnings.len(), 1, "warned once: {ls}");
    assert!(warnings[0].contains("`xfer keygen --renew old-runner --client`"), "{ls}");

    let list = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--list"], &[]);
    assert!(list.stdout().contains("old-runner (server and client)"), "{list}");

    // Renewing needs a role, then the certificate has that one only.
    let plain = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "old-runner"], &[]);
    plain.assert_code(2);
    assert!(plain.stderr().contains("--server or --client"), "{plain}");
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--renew", "old-runner", "--client"], &[]).assert_code(0);
    let renewed = CertInfo::read(&pki.certs().join("old-runner.pem")).unwrap();
    assert_eq!((renewed.role, renewed.names.clone()), (CertRole::Client, vec!["old-runner".to_owned()]));
    let ls = client(&pki, "old-runner", work.path(), "ls", &server, &[]);
    ls.assert_code(0);
    assert!(!ls.stderr().contains("valid for both"), "{ls}");
}

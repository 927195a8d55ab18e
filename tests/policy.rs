//! `serve --policy`: per-peer permissions by name, glob and prefix, and
//! SIGHUP reloads of policy and certificates.

use crate::support::*;

const POLICY: &str = r#"
[[rule]]
peer = "runner-*"
allow = ["read", "write"]
prefix = "artifacts/"

[[rule]]
peer = "deploy"
allow = ["read"]
"#;

fn policy_server(pki: &Pki, work: &Dir, text: &str) -> XferServer {
    let file = work.write("policy.toml", text.as_bytes());
    XferServer::start(pki, &work.join("root"), &["--policy", file.to_str().unwrap()])
}

#[test]
fn policy_allows_and_refuses_by_name_glob_and_prefix() {
    let pki = Pki::new();
    pki.issue(&["runner-7", "deploy"]);
    let work = Dir::new();
    let server = policy_server(&pki, &work, POLICY);
    work.write("app.bin", b"build output");

    // Positive controls first.
    client(&pki, "runner-7", work.path(), "push", &server, &["app.bin", "--to", "artifacts/1"]).assert_code(0);
    client(&pki, "deploy", work.path(), "pull", &server, &["artifacts/1/app.bin", "--out", "got"]).assert_code(0);
    client(&pki, "runner-7", work.path(), "ls", &server, &["artifacts"]).assert_code(0);

    let outside = client(&pki, "runner-7", work.path(), "push", &server, &["app.bin", "--to", "secret"]);
    outside.assert_code(4);
    let err = outside.stderr();
    assert!(err.contains("'runner-7'") && err.contains("write") && err.contains("secret/app.bin"), "{outside}");
    assert!(!work.join("root/secret").exists());

    client(&pki, "deploy", work.path(), "push", &server, &["app.bin", "--to", "artifacts/2"]).assert_code(4);
    assert!(!work.join("root/artifacts/2").exists());
    let rm = client(&pki, "runner-7", work.path(), "rm", &server, &["artifacts/1/app.bin"]);
    rm.assert_code(4);
    assert!(rm.stderr().contains("delete"), "{rm}");
    assert!(work.join("root/artifacts/1/app.bin").exists());
    let stranger = client(&pki, "client", work.path(), "ls", &server, &[]);
    stranger.assert_code(4);
    assert!(stranger.stderr().contains("no policy rule matches"), "{stranger}");
}

#[test]
fn a_policy_with_an_unknown_key_or_permission_stops_the_server_at_start() {
    let pki = Pki::new();
    let work = Dir::new();
    for bad in
        ["[[rule]]\npeer = \"a\"\nallow = [\"read\"]\npefix = \"x\"\n", "[[rule]]\npeer = \"a\"\nallow = [\"exec\"]\n"]
    {
        let file = work.write("bad.toml", bad.as_bytes());
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--root", "root", "--policy", file.to_str().unwrap()];
        let ids = pki.id_args("server");
        args.extend(ids.iter().map(String::as_str));
        let run = run_in(work.path(), &args, &[]);
        run.assert_code(2);
        assert!(run.stderr().contains("invalid policy") && run.stderr().contains("bad.toml"), "{run}");
    }
}

#[test]
fn sighup_reloads_the_policy_and_a_broken_one_is_refused() {
    let pki = Pki::new();
    pki.issue(&["runner-7"]);
    let work = Dir::new();
    let server = policy_server(&pki, &work, POLICY);
    work.write("f", b"x");
    client(&pki, "runner-7", work.path(), "push", &server, &["f", "--to", "artifacts"]).assert_code(0);

    // A broken file: refused, the old policy keeps working.
    work.write("policy.toml", b"[[rule]]\npeer = \"runner-*\"\nallow = [\"fly\"]\n");
    hup(&server);
    assert!(server.wait_for_log("reload refused"), "{}", server.log());
    client(&pki, "runner-7", work.path(), "push", &server, &["f", "--to", "artifacts"]).assert_code(0);

    // A valid file that grants nothing to runners: applied.
    work.write("policy.toml", b"[[rule]]\npeer = \"deploy\"\nallow = [\"read\"]\n");
    hup(&server);
    assert!(server.wait_for_log("reloaded certificates and policy"), "{}", server.log());
    client(&pki, "runner-7", work.path(), "push", &server, &["f", "--to", "artifacts"]).assert_code(4);
}

#[test]
fn sighup_swaps_the_server_certificate_while_a_long_push_completes() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let data = random_bytes(96 << 20, 31);
    work.write("big", &data);
    let old_cert = std::fs::read(pki.certs().join("server.pem")).unwrap();
    let push = spawn_push(&pki, &work, &server, "big");
    // Once bytes are arriving, re-issue the server's certificate and reload.
    wait_for_staged_data(&partials(&work.join("root")), 1);
    run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--server", "server", "--force"], &[]).assert_code(0);
    hup(&server);
    assert!(server.wait_for_log("reloaded certificates and policy"), "{}", server.log());
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(work.join("root/big")).unwrap(), data);
    // New connections see the new certificate, and still work.
    assert_ne!(std::fs::read(pki.certs().join("server.pem")).unwrap(), old_cert);
    client(&pki, "client", work.path(), "ls", &server, &[]).assert_code(0);
}

fn hup(server: &XferServer) {
    let status = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn shared_names_like_localhost_never_identify_a_peer() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = policy_server(&pki, &work, "[[rule]]\npeer = \"local*\"\nallow = [\"read\"]\n");
    let run = client(&pki, "client", work.path(), "ls", &server, &[]);
    run.assert_code(4);
    let allow = XferServer::start(&pki, &work.join("root2"), &["--allow", "localhost"]);
    client(&pki, "client", work.path(), "ls", &allow, &[]).assert_code(3);
}

//! Every command an error message suggests works when followed: each test
//! provokes the error, takes the command between backticks from the
//! message, fills in the placeholders a user would, and runs it.

use std::process::Command;

use crate::support::*;

/// The commands between backticks in `message`, placeholders replaced.
fn hints(message: &str, fill: &[(&str, &str)]) -> Vec<Vec<String>> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("xfer "))
        .map(|c| {
            let mut c = c.to_owned();
            for (from, to) in fill {
                c = c.replace(from, to);
            }
            c.split(' ').skip(1).map(str::to_owned).collect::<Vec<_>>()
        })
        .fold(Vec::new(), |mut all, c| {
            if !all.contains(&c) {
                all.push(c); // a warning and the error may suggest the same
            }
            all
        })
}

/// `hint` with `extra` arguments after it (the identity flags).
fn with(hint: &[String], extra: &[String]) -> Vec<String> {
    hint.iter().chain(extra).cloned().collect()
}

fn run_hint(cwd: &std::path::Path, hint: &[String], env: &[(&str, &str)]) -> Run {
    let args: Vec<&str> = hint.iter().map(String::as_str).collect();
    run_in(cwd, &args, env)
}

#[test]
fn san_hints_for_client_names_and_client_invites_issue_what_was_meant() {
    let pki = Pki::new();
    let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "edge", "--san", "edge.example.org"], &[]);
    run.assert_code(2);
    let found = hints(&run.stderr(), &[]);
    assert_eq!(found.len(), 1, "{run}");
    // The hint has no --dir: it finds ./certs like every command.
    run_hint(pki.dir.path(), &found[0], &[]).assert_code(0);
    let info = xfer::pki::CertInfo::read(&pki.certs().join("edge.pem")).unwrap();
    assert_eq!(info.role, xfer::pki::CertRole::Server);
    assert!(info.names.iter().any(|n| n == "edge.example.org"), "{:?}", info.names);

    let run = run_in(pki.dir.path(), &["keygen", "--invite", "edge-2", "--san", "e2.example.org"], &[]);
    run.assert_code(2);
    let found = hints(&run.stderr(), &[]);
    let followed = run_hint(pki.dir.path(), &found[0], &[]);
    followed.assert_code(0);
    assert!(followed.stdout().starts_with("xfer1-") && followed.stderr().contains("server certificate"), "{followed}");
}

#[test]
fn an_invite_without_a_ca_and_enroll_without_invites_say_what_to_run() {
    let work = Dir::new();
    let run = run_in(work.path(), &["keygen", "--dir", "pki", "--invite", "runner-1"], &[]);
    run.assert_code(2);
    let found = hints(&run.stderr(), &[]);
    assert_eq!(found, [["keygen", "--dir", "pki"]], "{run}");
    run_hint(work.path(), &found[0], &[]).assert_code(0);

    // The CA exists, but no invite yet: serve --enroll refuses to start.
    let mut cmd = Command::new(XFER);
    cmd.current_dir(work.path()).args(["serve", "--listen", "127.0.0.1:0", "--enroll", "--certs", "pki"]);
    let out = cmd.arg("--root").arg(work.join("root")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let found = hints(&err, &[("NAME", "runner-1")]);
    assert_eq!(found.len(), 1, "{err}");
    run_hint(work.path(), &found[0], &[]).assert_code(0);
    let pki = Pki { dir: work };
    let root = pki.dir.join("root");
    let mut cmd = Command::new(XFER);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--enroll", "--certs"]).arg(pki.dir.join("pki"));
    cmd.arg("--root").arg(&root).env_remove("RUST_LOG");
    let server = XferServer::spawn(cmd, &root); // waits for "listening on"
    let run = run_in(pki.dir.path(), &["ls", &server.addr, "--certs", "pki"], &[]);
    run.assert_code(0);
}

#[test]
fn a_server_and_path_where_a_server_belongs_suggests_both_forms_and_both_work() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    work.write("f.txt", b"hinted");
    let ids = pki.id_args("client");
    let id_args: Vec<&str> = ids.iter().map(String::as_str).collect();

    let wrong = format!("{}:backups/", server.addr);
    let mut args = vec!["push", wrong.as_str(), "f.txt"];
    args.extend_from_slice(&id_args);
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(2);
    let found = hints(&run.stderr(), &[("FILES...", "f.txt")]);
    assert_eq!(found.len(), 2, "{run}");
    for hint in &found {
        run_hint(work.path(), &with(hint, &ids), &[]).assert_code(0);
    }
    assert_eq!(std::fs::read(work.join("root/backups/f.txt")).unwrap(), b"hinted");

    let wrong = format!("{}:backups/f.txt", server.addr);
    let mut args = vec!["pull", wrong.as_str()];
    args.extend_from_slice(&id_args);
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(2);
    let found = hints(&run.stderr(), &[("DIR", "got")]);
    assert_eq!(found.len(), 2, "{run}");
    for hint in &found {
        run_hint(work.path(), &with(hint, &ids), &[]).assert_code(0);
        assert_eq!(std::fs::read(work.join("got/f.txt")).unwrap(), b"hinted");
        std::fs::remove_dir_all(work.join("got")).unwrap();
    }

    // A file argument that looks like HOST:PATH, given after the server.
    let wrong = format!("{}:more/", server.addr);
    let mut args = vec!["push", server.addr.as_str(), "f.txt", wrong.as_str()];
    args.extend_from_slice(&id_args);
    let run = run_in(work.path(), &args, &[]);
    run.assert_code(2);
    let found = hints(&run.stderr(), &[("FILES...", "f.txt")]);
    assert_eq!(found.len(), 2, "{run}");
    for hint in &found {
        run_hint(work.path(), &with(hint, &ids), &[]).assert_code(0);
    }
    assert_eq!(std::fs::read(work.join("root/more/f.txt")).unwrap(), b"hinted");
}

#[test]
fn a_server_identity_used_as_a_client_is_told_to_issue_a_client_one() {
    let pki = Pki::new();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let run = client(&pki, "server", work.path(), "ls", &server, &[]);
    run.assert_code(3);
    // The warning and the error, in one style: no log timestamps on a client.
    let err = run.stderr();
    assert!(err.lines().all(|l| l.starts_with("xfer: ")), "{run}");
    assert!(err.lines().any(|l| l.starts_with("xfer: warning: ") && l.contains("server certificate")), "{run}");
    let found = hints(&run.stderr(), &[("NAME", "runner-3")]);
    assert_eq!(found, [["keygen", "runner-3"]], "{run}");
    run_hint(pki.dir.path(), &found[0], &[]).assert_code(0);
    client(&pki, "runner-3", work.path(), "ls", &server, &[]).assert_code(0);
}

#[test]
fn enroll_against_a_server_without_enroll_names_the_flag_that_makes_it_work() {
    let pki = Pki::new();
    let run = run_in(pki.dir.path(), &["keygen", "--invite", "runner-4"], &[]);
    run.assert_code(0);
    let code = run.stdout().trim().to_owned();
    let work = Dir::new();
    let mut server = XferServer::start(&pki, &work.join("root"), &[]);
    let joiner = Dir::new();
    let run = run_in(joiner.path(), &["enroll", &server.addr, &code, "--dir", "certs"], &[]);
    run.assert_code(3);
    let found = hints(&run.stderr(), &[]);
    assert_eq!(found, [["serve", "--enroll"]], "{run}");
    server.terminate();
    let server =
        XferServer::start(&pki, &work.join("root"), &found[0][1..].iter().map(String::as_str).collect::<Vec<_>>());
    run_in(joiner.path(), &["enroll", &server.addr, &code, "--dir", "certs"], &[]).assert_code(0);
}

#[test]
fn both_renewals_an_expiry_warning_suggests_work() {
    let pki = Pki::new();
    run_in(pki.dir.path(), &["keygen", "runner-9", "--days", "10"], &[]).assert_code(0);
    let _invites = run_in(pki.dir.path(), &["keygen", "--invite", "unused"], &[]); // serve --enroll needs the file
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--enroll"]);
    let run = run_in(pki.dir.path(), &["ls", &server.addr, "--name", "runner-9"], &[]);
    run.assert_code(0);
    let warning = run.stderr();
    assert!(warning.starts_with("xfer: warning: certificate") && warning.contains("expires in 9 days"), "{run}");
    let found = hints(&warning, &[("HOST", server.addr.as_str())]);
    assert_eq!(found.len(), 2, "{run}");
    let before = std::fs::read(pki.certs().join("runner-9.pem")).unwrap();
    // From this machine: a new certificate from the serving CA.
    run_hint(pki.dir.path(), &found[0], &[]).assert_code(0);
    let renewed = std::fs::read(pki.certs().join("runner-9.pem")).unwrap();
    assert_ne!(before, renewed);
    // On the CA's machine: a year, so the warning is gone.
    run_hint(pki.dir.path(), &found[1], &[]).assert_code(0);
    let run = run_in(pki.dir.path(), &["ls", &server.addr, "--name", "runner-9"], &[]);
    run.assert_code(0);
    assert!(!run.stderr().contains("warning"), "{run}");
}

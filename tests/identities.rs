//! Finding identities and hosts without flags: `--certs`, `$XFER_CERTS`,
//! `./certs`, the per-user folder, and host aliases in `config.toml`;
//! and every hint on the way works when followed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// `XDG_CONFIG_HOME` for a "user" whose config lives in `home`.
fn as_user(home: &Dir) -> String {
    home.join(".config").display().to_string()
}

/// A server started from `cwd` with no identity flags at all.
fn serve_without_flags(cwd: &Path, config_home: &str, root: &Path, extra: &[&str]) -> XferServer {
    let mut cmd = Command::new(XFER);
    cmd.current_dir(cwd).args(["serve", "--listen", "127.0.0.1:0", "--root"]).arg(root).args(extra);
    cmd.env("XDG_CONFIG_HOME", config_home).env_remove("XFER_CERTS").env_remove("RUST_LOG");
    XferServer::spawn(cmd, root)
}

#[test]
fn without_certs_here_every_command_uses_the_per_user_folder_and_says_so() {
    let home = Dir::new();
    let xdg = as_user(&home);
    let user_certs = home.join(".config/xfer/certs");
    let (a, b) = (Dir::new(), Dir::new());

    // Nothing anywhere: the message says where it looked and what to run.
    let run = run_in(a.path(), &["ls", "127.0.0.1:9"], &[("XDG_CONFIG_HOME", &xdg)]);
    run.assert_code(1);
    let expected = format!("none in ./certs and {}", user_certs.display());
    assert!(run.stderr().contains(&expected) && run.stderr().contains("run `xfer keygen`"), "{run}");

    // Following the hint: keygen writes to the per-user folder (0700) and
    // says so; no ./certs appears.
    let run = run_in(a.path(), &["keygen"], &[("XDG_CONFIG_HOME", &xdg)]);
    run.assert_code(0);
    assert!(run.stdout().contains(&format!("wrote {}/ca.pem", user_certs.display())), "{run}");
    assert!(!a.join("certs").exists());
    let mode = std::fs::metadata(&user_certs).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // A server and a client from two other folders find it unasked.
    let server = serve_without_flags(b.path(), &xdg, &b.join("root"), &[]);
    a.write("f.txt", b"found");
    run_in(a.path(), &["push", &server.addr, "f.txt"], &[("XDG_CONFIG_HOME", &xdg)]).assert_code(0);
    assert_eq!(std::fs::read(b.join("root/f.txt")).unwrap(), b"found");
    let ls = run_in(b.path(), &["ls", &server.addr], &[("XDG_CONFIG_HOME", &xdg)]);
    ls.assert_code(0);
    assert!(ls.stdout().contains("f.txt"), "{ls}");
}

#[test]
fn flags_then_the_variable_then_dot_certs_then_the_user_folder() {
    let home = Dir::new();
    let xdg = as_user(&home);
    let work = Dir::new();
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];
    run_in(work.path(), &["keygen"], &env).assert_code(0); // the user folder
    let server = serve_without_flags(work.path(), &xdg, &work.join("root"), &[]);
    // A ./certs of another CA takes precedence over the user folder: its
    // client is refused by this server.
    std::fs::create_dir(work.join("certs")).unwrap();
    run_in(work.path(), &["keygen"], &env).assert_code(0);
    let run = run_in(work.path(), &["ls", &server.addr], &env);
    run.assert_code(3);
    // --certs, then $XFER_CERTS, take precedence over ./certs.
    let user_certs = home.join(".config/xfer/certs").display().to_string();
    run_in(work.path(), &["ls", &server.addr, "--certs", &user_certs], &env).assert_code(0);
    run_in(work.path(), &["ls", &server.addr], &[env[0], ("XFER_CERTS", &user_certs)]).assert_code(0);
    // A named folder that does not exist is named as such.
    let run = run_in(work.path(), &["ls", &server.addr, "--certs", "nowhere"], &env);
    run.assert_code(1);
    assert!(run.stderr().contains("nowhere does not exist"), "{run}");
}

#[test]
fn a_host_alias_gives_address_server_name_identity_and_certs() {
    let pki = Pki::new();
    let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--server", "files"], &[]);
    run.assert_code(0);
    pki.issue(&["runner-7"]);
    let work = Dir::new();
    let mut cmd = Command::new(XFER);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--allow", "runner-7", "--root"]).arg(work.join("root"));
    cmd.args(pki.id_args("files")).env_remove("RUST_LOG");
    let server = XferServer::spawn(cmd, &work.join("root"));

    // The config file's folder holds the identities, named relatively.
    let home = Dir::new();
    let xfer_dir = home.join(".config/xfer");
    std::fs::create_dir_all(&xfer_dir).unwrap();
    copy_dir(&pki.certs(), &xfer_dir.join("pki"));
    let config = |extra: &str| {
        let text = format!(
            "[host.artifacts]\naddress = \"{}\"\nserver_name = \"files\"\nname = \"runner-7\"\ncerts = \"pki\"\n{extra}",
            server.addr
        );
        std::fs::write(xfer_dir.join("config.toml"), text).unwrap();
    };
    config("");
    let xdg = as_user(&home);
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];
    let client = Dir::new();
    client.write("dist/app.bin", b"via alias");
    run_in(client.path(), &["push", "artifacts", "dist"], &env).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/dist/app.bin")).unwrap(), b"via alias");
    run_in(client.path(), &["cp", "artifacts:dist/app.bin", "got.bin"], &env).assert_code(0);
    assert_eq!(std::fs::read(client.join("got.bin")).unwrap(), b"via alias");
    let ls = run_in(client.path(), &["ls", "artifacts", "dist"], &env);
    ls.assert_code(0);
    assert!(ls.stdout().contains("app.bin"), "{ls}");
    // Flags win over the alias: another identity is refused by --allow.
    let run = run_in(client.path(), &["ls", "artifacts", "--name", "client"], &env);
    run.assert_code(3);
    // The alias's server name is the one checked.
    let wrong = std::fs::read_to_string(xfer_dir.join("config.toml")).unwrap().replace("\"files\"", "\"other\"");
    std::fs::write(xfer_dir.join("config.toml"), wrong).unwrap();
    let run = run_in(client.path(), &["ls", "artifacts"], &env);
    run.assert_code(3);
    assert!(run.stderr().contains("other"), "{run}");

    // A misspelt key is an error naming the file, the line and the key.
    config("adress = \"typo\"\n");
    let run = run_in(client.path(), &["ls", "artifacts"], &env);
    run.assert_code(2);
    assert!(run.stderr().contains("config.toml (line 6)") && run.stderr().contains("adress"), "{run}");
    // $XFER_CONFIG names another file, which must exist.
    let run = run_in(client.path(), &["ls", "artifacts"], &[env[0], ("XFER_CONFIG", "/nonexistent/xfer.toml")]);
    run.assert_code(1);
    assert!(run.stderr().contains("/nonexistent/xfer.toml"), "{run}");
}

#[test]
fn enroll_without_dir_writes_where_later_commands_look_and_its_next_step_works() {
    let pki = Pki::new();
    let run = run_in(pki.dir.path(), &["keygen", "--dir", "certs", "--invite", "runner-7"], &[]);
    run.assert_code(0);
    let code = run.stdout().trim().to_owned();
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &["--enroll"]);
    let home = Dir::new();
    let xdg = as_user(&home);
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];
    let joiner = Dir::new();
    let run = run_in(joiner.path(), &["enroll", &server.addr, &code], &env);
    run.assert_code(0);
    let user_certs = home.join(".config/xfer/certs");
    assert!(run.stdout().contains(&format!("wrote {}/runner-7.key", user_certs.display())), "{run}");
    // "next: xfer push HOST FILES --name runner-7", run as printed.
    let next = run.stdout().lines().last().unwrap().split("next: ").nth(1).unwrap().to_owned();
    assert_eq!(next, format!("xfer push {} FILES --name runner-7", server.addr), "{run}");
    joiner.write("FILES", b"next step");
    let args: Vec<&str> = next.split(' ').skip(1).collect();
    run_in(joiner.path(), &args, &env).assert_code(0);
    assert_eq!(std::fs::read(work.join("root/FILES")).unwrap(), b"next step");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_dot_certs_or_config_another_user_could_have_planted_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let home = Dir::new();
    let xdg = as_user(&home);
    let env = [("XDG_CONFIG_HOME", xdg.as_str())];
    let shared = Dir::new();
    run_in(shared.path(), &["keygen", "--dir", "certs"], &env).assert_code(0);
    std::fs::set_permissions(shared.join("certs"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = run_in(shared.path(), &["ls", "127.0.0.1:9"], &env);
    run.assert_code(1);
    assert!(run.stderr().contains("./certs: not used: every user may write to it"), "{run}");
    let run = run_in(shared.path(), &["keygen", "runner-1"], &env);
    run.assert_code(1);
    assert!(run.stderr().contains("pass --certs ./certs to use it anyway"), "{run}");
    // Owned by another user (nobody): refused too; named, it is used.
    std::fs::set_permissions(shared.join("certs"), std::fs::Permissions::from_mode(0o755)).unwrap();
    if rustix::process::geteuid().is_root() {
        let chown = Command::new("chown").arg("nobody").arg(shared.join("certs")).status().unwrap();
        assert!(chown.success());
        let run = run_in(shared.path(), &["ls", "127.0.0.1:9"], &env);
        assert!(run.stderr().contains("it belongs to another user"), "{run}");
        let run = run_in(shared.path(), &["ls", "127.0.0.1:9", "--certs", "./certs"], &env);
        assert!(!run.stderr().contains("not used"), "{run}");
    } else {
        eprintln!("NOTE: the another-user part of this test needs root to chown; it did not run");
    }

    // A config file every user may write is not read.
    let xfer_dir = home.join(".config/xfer");
    std::fs::create_dir_all(&xfer_dir).unwrap();
    std::fs::write(xfer_dir.join("config.toml"), "[host.a]\naddress = \"127.0.0.1:9\"\n").unwrap();
    std::fs::set_permissions(xfer_dir.join("config.toml"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = run_in(Dir::new().path(), &["ls", "a"], &env);
    run.assert_code(1);
    assert!(run.stderr().contains("config.toml: not used: every user may write to it"), "{run}");
}

#[test]
fn a_warning_quoting_a_certificate_stays_one_escaped_line() {
    let pki = Pki::new();
    pki.issue_dual_use_as("evil", "evil\nxfer: error: FORGED\x1b[2J");
    let work = Dir::new();
    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let run = client(&pki, "evil", work.path(), "ls", &server, &[]);
    let err = run.stderr();
    assert!(err.lines().all(|l| l.starts_with("xfer: ")), "{run}");
    assert!(!err.lines().any(|l| l.starts_with("xfer: error: FORGED")) && !err.contains('\x1b'), "{run}");
    assert!(err.contains("evil\\nxfer: error: FORGED"), "{run}");
}

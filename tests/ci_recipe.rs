//! Runs README.md's "Using xfer in CI" recipe, as written, on loopback: the
//! shell blocks tagged `ci-keygen`, `ci-serve`, `ci-enroll`, `ci-build` and `ci-deploy`,
//! with only the host name and the server's root replaced.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// The body of the README code block whose info string is `sh TAG`.
fn readme_block(tag: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find(&format!("```sh {tag}\n")).unwrap_or_else(|| panic!("README has no `sh {tag}` block"));
    let body = &readme[start..].split_once('\n').unwrap().1;
    body[..body.find("```").unwrap()].to_owned()
}

/// A shell whose PATH finds the `xfer` under test, with no identity set.
fn shell(script: &str, cwd: &Path) -> Command {
    let bin_dir = Path::new(XFER).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.args(["-euc", script]).current_dir(cwd).env("PATH", path).env_remove("RUST_LOG");
    for k in ["XFER_CERTS", "XFER_NAME", "XFER_CERT", "XFER_KEY", "XFER_CA"] {
        cmd.env_remove(k);
    }
    cmd
}

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_readme_ci_recipe_works_as_written() {
    let work = Dir::new();
    // The artifact host: CA, its certificate and the invite; then the
    // same serve command, with a local root and a free port.
    let host = work.join("host");
    std::fs::create_dir_all(&host).unwrap();
    let keygen = run(&mut shell(&readme_block("ci-keygen"), &host), "ci-keygen");
    let code = String::from_utf8_lossy(&keygen.stdout).lines().last().unwrap_or_default().to_owned();
    assert!(code.starts_with("xfer1-") && code.ends_with("-ci-runner"), "{code}");
    let serve = readme_block("ci-serve").trim().replace("/srv/artifacts", "srv") + " --listen 127.0.0.1:0";
    let server = XferServer::spawn(shell(&format!("exec {serve}"), &host), &host.join("srv"));

    // The machine that holds the CI settings enrolls with the code.
    let trusted = work.join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    let script = readme_block("ci-enroll").replace("artifacts.example.org", &server.addr);
    run(shell(&script, &trusted).env("CODE", &code), "ci-enroll");
    assert!(!host.join("ci-pki/ci-runner.key").exists(), "the runners' key was made on the host");

    // The CI secrets: PEM text in XFER_CA / XFER_CERT / XFER_KEY.
    let secret = |f: &str| std::fs::read_to_string(trusted.join("ci-pki").join(f)).unwrap();
    let secrets =
        [("XFER_CA", secret("ca.pem")), ("XFER_CERT", secret("ci-runner.pem")), ("XFER_KEY", secret("ci-runner.key"))];
    let job = |tag: &str, cwd: &Path| {
        let script = readme_block(tag).replace("artifacts.example.org", &server.addr);
        let mut cmd = shell(&script, cwd);
        cmd.env("CI_COMMIT", "3f2c1e").envs(secrets.iter().map(|(k, v)| (*k, v.as_str())));
        run(&mut cmd, tag)
    };

    let build = work.join("build");
    for (name, seed) in [("dist/app.bin", 1), ("dist/lib/core.so", 2), ("dist/README", 3)] {
        work.write(&format!("build/{name}"), &random_bytes(200_000, seed));
    }
    job("ci-build", &build);
    let pushed = std::fs::read_to_string(build.join("push.jsonl")).unwrap();
    assert!(pushed.contains("\"path\":\"builds/3f2c1e/dist/app.bin\"") && pushed.contains("\"failed\":0"), "{pushed}");

    let deploy = work.join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    job("ci-deploy", &deploy);
    for name in ["dist/app.bin", "dist/lib/core.so", "dist/README"] {
        assert_eq!(std::fs::read(deploy.join(name)).unwrap(), std::fs::read(build.join(name)).unwrap(), "{name}");
    }
    let pulled = std::fs::read_to_string(deploy.join("pull.jsonl")).unwrap();
    assert_eq!(pulled.matches("\"status\":\"ok\"").count(), 3, "{pulled}");

    // The runners' secret cannot serve: a server started with it is
    // refused by the deploy job.
    let leaked = work.join("leaked");
    std::fs::create_dir_all(&leaked).unwrap();
    let mut cmd = shell("exec xfer serve --root srv --listen 127.0.0.1:0", &leaked);
    cmd.envs(secrets.iter().map(|(k, v)| (*k, v.as_str())));
    let impostor = XferServer::spawn(cmd, &leaked.join("srv"));
    let script = readme_block("ci-deploy").replace("artifacts.example.org", &impostor.addr);
    let mut cmd = shell(&script, &leaked);
    cmd.env("CI_COMMIT", "3f2c1e").envs(secrets.iter().map(|(k, v)| (*k, v.as_str())));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the server presented a client certificate (ci-runner)"));
    drop(impostor);

    // The exit-5 check passes a clean pull through...
    let checked = work.join("checked");
    std::fs::create_dir_all(&checked).unwrap();
    job("ci-check", &checked);
    // ...and flags a corrupted one: a server that corrupts what it sends
    // (debug builds' fault hook) on the same root.
    drop(server);
    let serve = readme_block("ci-serve").trim().replace("/srv/artifacts", "srv") + " --listen 127.0.0.1:0";
    let mut cmd = shell(&format!("exec {serve}"), &host);
    cmd.env("XFER_FAULT_CORRUPT_PAYLOAD", "1");
    let corrupting = XferServer::spawn(cmd, &host.join("srv"));
    let script = readme_block("ci-check").replace("artifacts.example.org", &corrupting.addr);
    // A fresh folder: in `checked` the files are already there, identical,
    // and would not be sent again.
    let fresh = work.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let mut cmd = shell(&script, &fresh);
    cmd.env("CI_COMMIT", "3f2c1e").envs(secrets.iter().map(|(k, v)| (*k, v.as_str())));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("artifact failed its integrity check"));
}

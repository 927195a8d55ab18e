//! Randomized SIGKILL loops: each side of a push and of a pull is killed at
//! random moments, at least 20 times, then the command is run to the end.
//! Nothing but the source's files may be left: no temporary file in any
//! folder, no staging left in a pull's destination, nothing half-written
//! under a final name.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const KILLS: usize = 20;

/// A small deterministic generator, seeded from the clock (the seed is
/// printed, so a failure can be replayed with XFER_TEST_SEED).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("XFER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("kill loop seed: {seed}");
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A tree of large files (resumable, partial copies) and small ones.
fn source(work: &Dir) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..4u64 {
        files.push((format!("src/big{i}.bin"), random_bytes((3 << 20) + i as usize * 4099, 40 + i)));
    }
    for i in 0..40u64 {
        files.push((format!("src/d{}/small{i}", i % 3), random_bytes(2000 + i as usize * 37, 60 + i)));
    }
    for (p, data) in &files {
        work.write(p, data);
    }
    files
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn(pki: &Pki, cwd: &Path, args: &[&str]) -> Child {
    Command::new(XFER)
        .current_dir(cwd)
        .args(args)
        .args(pki.id_args("client"))
        .env("XFER_FAULT_SLOW_PAYLOAD", "3")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Every file under `dir` except the top-level `.xfer` staging folder.
fn files_outside_staging(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.retain(|p| !p.starts_with(".xfer/") && p != ".xfer");
    out.sort();
    out
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            walk(base, &p, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().display().to_string());
        }
    }
}

fn expect_exactly(dir: &Path, prefix: &str, files: &[(String, Vec<u8>)]) {
    let want: Vec<String> = {
        let mut w: Vec<String> = files.iter().map(|(p, _)| format!("{prefix}{}", &p["src/".len()..])).collect();
        w.sort();
        w
    };
    assert_eq!(files_outside_staging(dir), want, "only the source's files in {}", dir.display());
    for (p, data) in files {
        let got = std::fs::read(dir.join(format!("{prefix}{}", &p["src/".len()..]))).unwrap();
        assert!(got == *data, "{p} differs");
    }
}

#[test]
fn killing_either_side_of_a_push_at_random_leaves_nothing_behind() {
    let pki = Pki::new();
    let work = Dir::new();
    let files = source(&work);
    let root = work.join("root");
    let mut rng = Rng::new();
    let started = Instant::now();

    // The client, killed.
    let server = XferServer::start(&pki, &root, &["-q"]);
    for _ in 0..KILLS {
        let mut push = spawn(&pki, work.path(), &["push", &server.addr, "src", "--retry", "0"]);
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        kill9(&mut push);
    }
    drop(server);
    // The server, killed (and restarted on the same root each time).
    for _ in 0..KILLS {
        let server = XferServer::start(&pki, &root, &["-q"]);
        let mut push = spawn(&pki, work.path(), &["push", &server.addr, "src", "--retry", "0"]);
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        drop(server); // SIGKILL
        kill9(&mut push);
    }
    let server = XferServer::start(&pki, &root, &["-q"]);
    client(&pki, "client", work.path(), "push", &server, &["src"]).assert_code(0);
    expect_exactly(&root, "src/", &files);
    assert_eq!(work.listing("root/.xfer/tmp"), Vec::<String>::new(), "temporary files left");
    assert!(started.elapsed() < Duration::from_secs(240));
}

#[test]
fn killing_either_side_of_a_pull_at_random_leaves_nothing_behind() {
    let pki = Pki::new();
    let work = Dir::new();
    let files = source(&work);
    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::rename(work.join("src"), root.join("src")).unwrap();
    let mut rng = Rng::new();
    let started = Instant::now();

    let server = XferServer::start(&pki, &root, &["-q"]);
    for _ in 0..KILLS {
        let mut pull = spawn(&pki, work.path(), &["pull", &server.addr, "src", "--out", "got", "--retry", "0"]);
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        kill9(&mut pull);
    }
    drop(server);
    for _ in 0..KILLS {
        let server = XferServer::start_with_env(&pki, &root, &["-q"], &[("XFER_FAULT_SLOW_PAYLOAD", "3")]);
        let mut pull = spawn(&pki, work.path(), &["pull", &server.addr, "src", "--out", "got", "--retry", "0"]);
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        drop(server); // SIGKILL
        kill9(&mut pull);
    }
    let server = XferServer::start(&pki, &root, &["-q"]);
    client(&pki, "client", work.path(), "pull", &server, &["src", "--out", "got"]).assert_code(0);
    expect_exactly(&work.join("got"), "src/", &files);
    assert!(!work.join("got/.xfer").exists(), "staging left in the destination: {:?}", work.listing("got/.xfer"));
    assert!(started.elapsed() < Duration::from_secs(240));
}

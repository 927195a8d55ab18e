//! Local helper commands: hash, completions, man, version.

use crate::support::*;

#[test]
fn hash_prints_b3sum_lines_that_match_what_a_push_reports() {
    let pki = Pki::new();
    let work = Dir::new();
    let data = random_bytes(100_000, 11);
    work.write("f.bin", &data);
    let run = run_in(work.path(), &["hash", "f.bin"], &[]);
    run.assert_code(0);
    let want = blake3::hash(&data).to_hex().to_string();
    assert_eq!(run.stdout(), format!("{want}  f.bin\n"));

    let server = XferServer::start(&pki, &work.join("root"), &[]);
    let push = client(&pki, "client", work.path(), "push", &server, &["f.bin", "--json"]);
    assert_eq!(push.json()[0]["blake3"], want.as_str());

    let missing = run_in(work.path(), &["hash", "f.bin", "nope"], &[]);
    missing.assert_code(1);
    assert!(missing.stdout().contains(&want) && missing.stderr().contains("nope"), "{missing}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let work = Dir::new();
    for shell in ["bash", "zsh", "fish"] {
        let run = run_in(work.path(), &["completions", shell], &[]);
        run.assert_code(0);
        assert!(run.stdout().contains("keygen") && run.stdout().contains("push"), "{shell}: {run}");
    }
    let man = run_in(work.path(), &["man"], &[]);
    man.assert_code(0);
    assert!(man.stdout().contains(".TH xfer 1") && man.stdout().contains("keygen"), "{man}");
    let version = run_in(work.path(), &["--version"], &[]);
    assert!(version.stdout().contains(&format!("(protocol {})", xfer::protocol::VERSION)), "{version}");
}

#[test]
fn hash_check_verifies_b3sum_lines_and_man_writes_a_page_per_command() {
    let work = Dir::new();
    work.write("a.txt", b"alpha");
    work.write("b c.txt", b"beta");
    let sums = run_in(work.path(), &["hash", "a.txt", "b c.txt"], &[]);
    sums.assert_code(0);
    work.write("SUMS", sums.stdout().as_bytes());
    let ok = run_in(work.path(), &["hash", "--check", "SUMS"], &[]);
    ok.assert_code(0);
    assert_eq!(ok.stdout(), "a.txt: OK\nb c.txt: OK\n", "{ok}");
    work.write("b c.txt", b"changed");
    let bad = run_in(work.path(), &["hash", "-c", "SUMS"], &[]);
    bad.assert_code(1);
    assert!(bad.stdout().contains("b c.txt: FAILED"), "{bad}");

    // A list naming `-`, and a line that is not UTF-8: neither stops the
    // check, nor hangs it on standard input.
    let mut list = format!("{}  -\n", blake3::hash(b"").to_hex()).into_bytes();
    list.extend_from_slice(b"\xff\xfe  x\n");
    list.extend_from_slice(sums.stdout().lines().next().unwrap().as_bytes());
    list.push(b'\n');
    work.write("ODD", &list);
    let odd = run_in(work.path(), &["hash", "--check", "ODD"], &[]);
    assert_eq!(odd.code(), 1, "{odd}");
    assert!(odd.stdout().contains("-: FAILED") && odd.stdout().contains("a.txt: OK"), "{odd}");
    assert!(odd.stderr().contains("1 line(s) are not"), "{odd}");

    let man = run_in(work.path(), &["man", "--dir", "man1"], &[]);
    man.assert_code(0);
    for page in ["xfer.1", "xfer-push.1", "xfer-enroll.1", "xfer-serve.1"] {
        let text = std::fs::read_to_string(work.join(&format!("man1/{page}"))).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let push = std::fs::read_to_string(work.join("man1/xfer-push.1")).unwrap();
    assert!(push.contains("bwlimit") && push.contains(".TH xfer-push"), "{push}");
}

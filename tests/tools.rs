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

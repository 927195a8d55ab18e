//! A real 3-node Garage cluster on loopback per test (scripts/garage.sh),
//! stopped when the test ends. Garage is built from crates.io when missing
//! (once, under a lock; .ci/run does it beforehand): never skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use xfer::objects::{Access, Bucket};

pub struct Garage {
    dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh")
}

/// Builds garage if it is not there yet; one test at a time does it.
fn ensure_installed() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        let out = Command::new(script()).arg("install").output().expect("run scripts/garage.sh install");
        assert!(out.status.success(), "garage could not be installed:\n{}", String::from_utf8_lossy(&out.stderr));
        *done = true;
    }
}

impl Garage {
    pub fn start() -> Garage {
        ensure_installed();
        // Free ports are picked before Garage binds them: a test starting
        // its own cluster at the same moment can take one. Tried again then.
        let mut failures = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("xfer-garage-").tempdir().unwrap();
            let out =
                Command::new(script()).arg("start").arg(dir.path()).output().expect("run scripts/garage.sh start");
            if !out.status.success() {
                let _ = Command::new(script()).arg("stop").arg(dir.path()).status();
                failures.push_str(&String::from_utf8_lossy(&out.stdout));
                failures.push_str(&String::from_utf8_lossy(&out.stderr));
                continue;
            }
            let text = std::fs::read_to_string(dir.path().join("env")).unwrap();
            let env = text
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            return Garage { dir, env };
        }
        panic!("the Garage cluster did not start, three times:\n{failures}");
    }

    /// The S3 endpoint of node `n` (1-3).
    pub fn endpoint(&self, n: usize) -> String {
        self.env["XFER_TEST_ENDPOINTS"].split(' ').nth(n - 1).unwrap().to_owned()
    }

    /// A client of the test bucket under `prefix`, through node `n`.
    pub fn bucket(&self, prefix: &str, n: usize) -> Bucket {
        let access = Access {
            endpoint: Some(self.endpoint(n)),
            region: Some("garage".into()),
            keys: Some((self.env["AWS_ACCESS_KEY_ID"].clone(), self.env["AWS_SECRET_ACCESS_KEY"].clone())),
        };
        Bucket::open(format!("s3://xfer/{prefix}").parse().unwrap(), &access).unwrap()
    }

    /// SIGKILLs node `n`.
    pub fn kill(&self, n: usize) {
        let st = Command::new(script()).arg("kill").arg(self.dir.path()).arg(n.to_string()).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}

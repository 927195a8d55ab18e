//! `xfer hash`: BLAKE3 lines in `b3sum`'s format, and `--check` to verify
//! files against such lines (from `xfer hash`, `b3sum`, or the hashes a
//! push reported).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Args)]
pub struct HashArgs {
    /// Files to hash; `-` reads standard input. With --check: files of
    /// `HASH  PATH` lines to verify.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Read `HASH  PATH` lines (b3sum's format) from FILES and check each
    /// path against its hash.
    #[arg(short, long)]
    pub check: bool,
}

/// Runs `xfer hash` or `xfer hash --check`. Every file is tried; any
/// failure fails the command (exit 1, as with b3sum).
pub(super) fn run(a: &HashArgs) -> anyhow::Result<()> {
    if a.check {
        return check(&a.files);
    }
    let mut failed = 0;
    for f in &a.files {
        match hash_of(f) {
            Ok(hex) => println!("{}", line(&hex, f)),
            Err(e) => {
                eprintln!("xfer: {}: {e}", crate::text::escape(&f.display().to_string()));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be read", a.files.len());
    }
    Ok(())
}

fn hash_of(f: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    if f.as_os_str() == "-" {
        hasher.update_reader(std::io::stdin().lock())?;
    } else {
        hasher.update_reader(std::fs::File::open(f)?)?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// `HASH  PATH`, b3sum's way: a path holding a backslash or a newline is
/// written escaped, and the line then starts with a backslash.
fn line(hex: &str, path: &Path) -> String {
    let name = path.display().to_string();
    if name.contains(['\\', '\n', '\r']) {
        let escaped = name.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r");
        format!("\\{hex}  {escaped}")
    } else {
        format!("{hex}  {name}")
    }
}

/// Parses one line of b3sum output into the hash and the path.
fn parse(line: &str) -> Option<(String, String)> {
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (hex, name) = line.split_once("  ")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
        return None;
    }
    let name = if escaped { unescape(name)? } else { name.to_owned() };
    Some((hex.to_ascii_lowercase(), name))
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            _ => return None,
        }
    }
    Some(out)
}

/// Longest line of a check list.
const MAX_LINE: usize = 64 * 1024;

/// `xfer hash --check`: `PATH: OK` or `PATH: FAILED` per line, as b3sum.
fn check(lists: &[PathBuf]) -> anyhow::Result<()> {
    let (mut checked, mut failed, mut malformed) = (0usize, 0usize, 0usize);
    for list in lists {
        let reader: Box<dyn BufRead> = if list.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            let file = std::fs::File::open(list).map_err(|e| {
                anyhow::anyhow!("cannot read {}: {e}", crate::text::escape(&list.display().to_string()))
            })?;
            Box::new(std::io::BufReader::new(file))
        };
        let mut reader = reader;
        let mut raw = Vec::new();
        loop {
            raw.clear();
            // A line is bounded (a hostile list cannot fill memory), and
            // one that is not UTF-8 is counted, not the end of the check.
            let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut raw)?;
            if n == 0 {
                break;
            }
            let complete = raw.ends_with(b"\n") || n <= MAX_LINE;
            if !complete {
                // Skip the rest of an over-long line.
                let mut rest = Vec::new();
                reader.read_until(b'\n', &mut rest)?;
            }
            let parsed = std::str::from_utf8(&raw).ok().filter(|_| complete).map(|t| t.trim_end_matches(['\n', '\r']));
            let Some(text) = parsed else {
                malformed += 1;
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            let Some((want, name)) = parse(text) else {
                malformed += 1;
                continue;
            };
            checked += 1;
            let shown = crate::text::escape(&name).into_owned();
            // A list names files: `-` is one named so, never the input the
            // list itself may be coming from.
            let path = if name == "-" { Path::new("./-") } else { Path::new(&name) };
            match hash_of(path) {
                Ok(got) if got == want => println!("{shown}: OK"),
                Ok(_) => {
                    println!("{shown}: FAILED");
                    failed += 1;
                }
                Err(e) => {
                    println!("{shown}: FAILED ({e})");
                    failed += 1;
                }
            }
        }
    }
    if malformed > 0 {
        eprintln!("xfer: {malformed} line(s) are not `HASH  PATH` lines and were not checked");
    }
    if failed > 0 || checked == 0 {
        anyhow::bail!("{failed} of {checked} files did not match");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_in_b3sums_format_with_escapes() {
        let hex = "a".repeat(64);
        for name in ["plain.txt", "with space", "back\\slash", "new\nline"] {
            let l = line(&hex, Path::new(name));
            assert_eq!(l.starts_with('\\'), name.contains(['\\', '\n']), "{l}");
            assert!(!l.contains('\n'));
            assert_eq!(parse(&l), Some((hex.clone(), name.to_owned())));
        }
        assert_eq!(parse("xyz  file"), None);
        assert_eq!(parse(&format!("{hex} file")), None);
    }
}

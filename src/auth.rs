//! Authorization: which peer may read, write or delete where.
//!
//! Pure code: a [`Policy`] is parsed from TOML text and answers
//! [`Policy::check`] for a peer's certificate names, a permission and a
//! path. Reading the file and applying the answer are the server's job.
//!
//! ```toml
//! [[rule]]
//! peer = "runner-*"            # exact name or a glob (globset: *, ?, [a-z], {a,b})
//! allow = ["read", "write"]    # of read, write, delete
//! prefix = "artifacts/"        # optional; default: the whole root
//! ```
//!
//! A request is allowed when some rule whose `peer` matches one of the
//! peer's names grants the permission for a path at or under its prefix.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::WirePath;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    /// `pull` and `ls`.
    Read,
    /// `push` (files and folders).
    Write,
    /// `rm`.
    Delete,
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Delete => "delete",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    peer: String,
    allow: Vec<Perm>,
    prefix: Option<String>,
}

/// One validated rule.
#[derive(Debug, Clone)]
struct Rule {
    peer: String,
    /// `peer`, compiled.
    matcher: globset::GlobMatcher,
    allow: Vec<Perm>,
    prefix: WirePath,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        (&self.peer, &self.allow, &self.prefix) == (&other.peer, &other.allow, &other.prefix)
    }
}

impl Eq for Rule {}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Parses and validates policy text; unknown keys and permissions are
    /// errors, not silently ignored.
    pub fn parse(text: &str) -> std::result::Result<Policy, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let mut rules = Vec::new();
        for (i, r) in file.rule.into_iter().enumerate() {
            if r.peer.is_empty() {
                return Err(format!("rule {}: peer must not be empty", i + 1));
            }
            let prefix = match &r.prefix {
                None => WirePath::root(),
                Some(p) => match WirePath::from_user(p) {
                    Err(e) => return Err(format!("rule {}: prefix '{p}': {e}", i + 1)),
                    // `.`, `./` or `` would silently mean the whole root:
                    // a rule that means it leaves `prefix` out.
                    Ok(w) if w.is_root() => {
                        return Err(format!(
                            "rule {}: prefix '{p}' names the whole root; leave prefix out to grant the whole root",
                            i + 1
                        ));
                    }
                    Ok(w) => w,
                },
            };
            let matcher = globset::Glob::new(&r.peer)
                .map_err(|e| format!("rule {}: peer '{}': {}", i + 1, r.peer, e.kind()))?
                .compile_matcher();
            rules.push(Rule { peer: r.peer, matcher, allow: r.allow, prefix });
        }
        Ok(Policy { rules })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy> {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read policy {what}"), e))?;
        Policy::parse(&text).map_err(|m| Error::Usage(format!("invalid policy {what}: {m}")))
    }

    /// Allows or refuses `perm` on `path` for a peer known by `names`; the
    /// refusal says who, what, where and why.
    pub fn check(&self, names: &[String], perm: Perm, path: &WirePath) -> std::result::Result<(), String> {
        let matching: Vec<&Rule> = self.rules.iter().filter(|r| names.iter().any(|n| r.matcher.is_match(n))).collect();
        if matching.iter().any(|r| r.allow.contains(&perm) && path.starts_with(&r.prefix)) {
            return Ok(());
        }
        let peer = names.first().map(String::as_str).unwrap_or("(unnamed)");
        let why = if matching.is_empty() {
            "no policy rule matches this peer".to_owned()
        } else if matching.iter().any(|r| r.allow.contains(&perm)) {
            let where_: Vec<String> = matching
                .iter()
                .filter(|r| r.allow.contains(&perm))
                .map(|r| if r.prefix.is_root() { "the whole root".into() } else { format!("{}/", r.prefix) })
                .collect();
            format!("{perm} is granted only under {}", where_.join(", "))
        } else {
            format!("no policy rule grants it {perm}")
        };
        Err(format!("peer '{}' may not {perm} '{path}': {why}", crate::text::Safe(peer)))
    }
}

/// Matches `name` against the glob `pattern` (globset: `*`, `?`,
/// `[...]`, `{a,b}`); an invalid pattern matches nothing (rules are
/// checked when the policy is parsed, so none reaches here).
#[cfg(test)]
fn glob(pattern: &str, name: &str) -> bool {
    globset::Glob::new(pattern).is_ok_and(|g| g.compile_matcher().is_match(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[rule]]
        peer = "runner-*"
        allow = ["read", "write"]
        prefix = "artifacts/"

        [[rule]]
        peer = "deploy"
        allow = ["read"]
    "#;

    fn p(s: &str) -> WirePath {
        WirePath::parse(s).unwrap()
    }

    fn names(n: &str) -> Vec<String> {
        vec![n.to_owned()]
    }

    #[test]
    fn globs_match_like_shells_do() {
        assert!(glob("runner-*", "runner-7"));
        assert!(glob("runner-*", "runner-"));
        assert!(!glob("runner-*", "xrunner-7"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-c"));
        assert!(glob("*.ci.example.org", "r1.ci.example.org"));
        assert!(!glob("exact", "exact2"));
        assert!(glob("ab*ab", "abab") && !glob("ab*ab", "aba"));
        // globset brings classes and alternatives.
        assert!(glob("runner-[0-9]", "runner-7") && !glob("runner-[0-9]", "runner-x"));
        assert!(glob("{deploy,release}-*", "release-2") && !glob("{deploy,release}-*", "build-2"));
        let bad = Policy::parse("[[rule]]\npeer = \"runner-[\"\nallow = [\"read\"]\n").unwrap_err();
        assert!(bad.contains("rule 1: peer 'runner-['"), "{bad}");
    }

    #[test]
    fn rules_grant_by_name_glob_and_prefix() {
        let policy = Policy::parse(EXAMPLE).unwrap();
        assert!(policy.check(&names("runner-7"), Perm::Write, &p("artifacts/x/y.bin")).is_ok());
        assert!(policy.check(&names("runner-7"), Perm::Read, &p("artifacts")).is_ok());
        let e = policy.check(&names("runner-7"), Perm::Write, &p("secrets/key")).unwrap_err();
        assert!(
            e.contains("runner-7") && e.contains("write") && e.contains("secrets/key") && e.contains("artifacts/"),
            "{e}"
        );
        let e = policy.check(&names("runner-7"), Perm::Delete, &p("artifacts/x")).unwrap_err();
        assert!(e.contains("no policy rule grants it delete"), "{e}");
        assert!(policy.check(&names("deploy"), Perm::Read, &p("anything/at/all")).is_ok());
        assert!(policy.check(&names("deploy"), Perm::Write, &p("x")).is_err());
        let e = policy.check(&names("stranger"), Perm::Read, &WirePath::root()).unwrap_err();
        assert!(e.contains("no policy rule matches this peer"), "{e}");
        // Any of the certificate's names may match.
        assert!(policy.check(&["x".into(), "deploy".into()], Perm::Read, &p("f")).is_ok());
        // A prefix is a folder boundary, not a string prefix.
        assert!(policy.check(&names("runner-1"), Perm::Read, &p("artifacts2/f")).is_err());
    }

    #[test]
    fn unknown_keys_and_permissions_are_errors() {
        for bad in [
            "[[rule]]\npeer = \"a\"\nallow = [\"read\"]\npefix = \"x\"\n",
            "[[rule]]\npeer = \"a\"\nallow = [\"execute\"]\n",
            "[[rule]]\nallow = [\"read\"]\n",
            "[[rules]]\npeer = \"a\"\nallow = [\"read\"]\n",
            "[[rule]]\npeer = \"a\"\nallow = [\"read\"]\nprefix = \"../x\"\n",
            "[[rule]]\npeer = \"a\"\nallow = [\"read\"]\nprefix = \".\"\n",
            "[[rule]]\npeer = \"a\"\nallow = [\"read\"]\nprefix = \"./\"\n",
            "[[rule]]\npeer = \"a\"\nallow = [\"read\"]\nprefix = \"\"\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Policy::parse("").unwrap(), Policy { rules: vec![] });
    }
}

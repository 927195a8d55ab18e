//! `WirePath`: a relative path that has been checked once and can be trusted.
//!
//! Every path that crosses the wire is hostile until `WirePath::parse` says
//! otherwise. The rules (PROTOCOL.md, "Paths") are strict on purpose: the
//! receiver never has to normalise anything, so there is exactly one spelling
//! of each path and nothing to get wrong later. The empty path names the root
//! itself; operations that cannot act on the root refuse it explicitly.

use std::fmt;

use super::{MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// Why a path was refused. Each variant names one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("absolute paths are not allowed; paths are relative to the server's root")]
    Absolute,
    #[error("'..' is not allowed: paths may not climb out of the root")]
    ParentComponent,
    #[error("empty or '.' components are not allowed")]
    EmptyComponent,
    #[error("NUL bytes are not allowed")]
    Nul,
    #[error("backslashes are not allowed")]
    Backslash,
    #[error("control characters (and invisible or text-reordering ones) are not allowed")]
    Control,
    #[error("a component is longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("the path is not valid UTF-8")]
    NotUtf8,
}

/// A validated path relative to a root: components separated by `/`, none
/// empty, `.` or `..`, no NUL or backslash, bounded lengths. Empty = the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct WirePath(String);

impl WirePath {
    /// The root itself.
    pub fn root() -> WirePath {
        WirePath(String::new())
    }

    /// Validates a path exactly as it arrived from the wire.
    pub fn parse(s: &str) -> Result<WirePath, PathError> {
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if s.is_empty() {
            return Ok(WirePath::root());
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        for c in s.split('/') {
            check_component(c)?;
        }
        Ok(WirePath(s.to_owned()))
    }

    /// Validates raw bytes from the wire (which must be UTF-8).
    pub fn parse_bytes(b: &[u8]) -> Result<WirePath, PathError> {
        WirePath::parse(std::str::from_utf8(b).map_err(|_| PathError::NotUtf8)?)
    }

    /// Normalises what a user typed for a remote path: `dist/`, `./dist` and
    /// `dist//x` are accepted and cleaned; absolute paths and `..` are not,
    /// since the user asked for something outside the root.
    pub fn from_user(s: &str) -> Result<WirePath, PathError> {
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let mut out = WirePath::root();
        for c in s.split('/').filter(|c| !c.is_empty() && *c != ".") {
            out = out.join(c)?;
        }
        Ok(out)
    }

    /// A valid path that resembles `s`, for naming something whose real name
    /// cannot be sent (in an error report): bad characters become `_`,
    /// `.`/`..`/empty components are dropped, lengths are cut to the limits.
    pub fn lossy(s: &str) -> WirePath {
        let mut out = WirePath::root();
        for c in s.split('/').filter(|c| !matches!(*c, "" | "." | "..")) {
            let mut c: String =
                c.chars().map(|ch| if ch == '\\' || crate::text::is_unsafe(ch) { '_' } else { ch }).collect();
            while c.len() > MAX_COMPONENT_LEN {
                c.pop();
            }
            match out.join(&c) {
                Ok(p) => out = p,
                Err(_) => break,
            }
        }
        out
    }

    /// Appends one component, validating it.
    pub fn join(&self, component: &str) -> Result<WirePath, PathError> {
        check_component(component)?;
        let joined = if self.0.is_empty() { component.to_owned() } else { format!("{}/{}", self.0, component) };
        if joined.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        Ok(WirePath(joined))
    }

    /// Appends another validated path.
    pub fn join_path(&self, other: &WirePath) -> Result<WirePath, PathError> {
        other.components().try_fold(self.clone(), |p, c| p.join(c))
    }

    /// True for the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.components().last()
    }

    /// Everything but the last component (the root for a one-component path).
    pub fn parent(&self) -> Option<WirePath> {
        let name = self.file_name()?;
        let keep = self.0.len() - name.len();
        Some(WirePath(self.0[..keep.saturating_sub(1)].to_owned()))
    }

    /// True when `self` is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &WirePath) -> bool {
        prefix.is_root()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0) && self.0.as_bytes()[prefix.0.len()] == b'/')
    }
}

fn check_component(c: &str) -> Result<(), PathError> {
    match c {
        "" | "." => Err(PathError::EmptyComponent),
        ".." => Err(PathError::ParentComponent),
        _ if c.len() > MAX_COMPONENT_LEN => Err(PathError::ComponentTooLong),
        _ if c.contains('\0') => Err(PathError::Nul),
        _ if c.contains('\\') => Err(PathError::Backslash),
        // C0 and C1 controls, DEL, and the characters that reorder or hide
        // text: a name a terminal or log would act on (escape sequences,
        // forged lines, a name shown backwards) is no name to store.
        _ if c.chars().any(crate::text::is_unsafe) => Err(PathError::Control),
        _ if c.contains('/') => Err(PathError::EmptyComponent),
        _ => Ok(()),
    }
}

impl fmt::Display for WirePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str(".") } else { f.write_str(&self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for ok in ["a", "a/b.txt", "dist/app.tar.gz", ".hidden/x", "a..b", "é/ü"] {
            assert_eq!(WirePath::parse(ok).unwrap().as_str(), ok);
        }
        assert!(WirePath::parse("").unwrap().is_root());
    }

    #[test]
    fn refuses_every_unsafe_form() {
        let cases = [
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::ParentComponent),
            ("a/../../x", PathError::ParentComponent),
            ("a/..", PathError::ParentComponent),
            ("a//b", PathError::EmptyComponent),
            ("a/./b", PathError::EmptyComponent),
            (".", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
            ("a\\..\\b", PathError::Backslash),
            ("a\x1b]0;pwned\x07", PathError::Control),
            ("x/\nforged line", PathError::Control),
            ("a\rb", PathError::Control),
            ("a\x7fb", PathError::Control),
            ("a\u{9b}2J", PathError::Control),
            ("invoice\u{202e}fdp.exe", PathError::Control),
            ("a\u{2028}b", PathError::Control),
            ("zero\u{200b}width", PathError::Control),
        ];
        for (input, want) in cases {
            assert_eq!(WirePath::parse(input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let long = "x".repeat(MAX_COMPONENT_LEN + 1);
        assert_eq!(WirePath::parse(&long).unwrap_err(), PathError::ComponentTooLong);
        assert!(WirePath::parse(&"x".repeat(MAX_COMPONENT_LEN)).is_ok());
        let deep = vec!["abcdefg"; 600].join("/");
        assert_eq!(WirePath::parse(&deep).unwrap_err(), PathError::TooLong);
        assert_eq!(WirePath::parse_bytes(&[0x61, 0xff]).unwrap_err(), PathError::NotUtf8);
    }

    #[test]
    fn user_paths_are_normalised_but_never_escape() {
        assert_eq!(WirePath::from_user("dist/").unwrap().as_str(), "dist");
        assert_eq!(WirePath::from_user("./a//b/").unwrap().as_str(), "a/b");
        assert!(WirePath::from_user(".").unwrap().is_root());
        assert_eq!(WirePath::from_user("/etc/x").unwrap_err(), PathError::Absolute);
        assert_eq!(WirePath::from_user("a/../../x").unwrap_err(), PathError::ParentComponent);
    }

    #[test]
    fn lossy_paths_are_always_valid() {
        assert_eq!(WirePath::lossy("a/b\\c/../x\0y").as_str(), "a/b_c/x_y");
        assert_eq!(WirePath::lossy("a\x1b[2J\n").as_str(), "a_[2J_");
        assert_eq!(WirePath::lossy(&"é".repeat(200)).as_str().len(), 254);
        assert!(WirePath::lossy("/./..").is_root());
    }

    #[test]
    fn parent_name_and_prefix() {
        let p = WirePath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), Some("c.txt"));
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert!(WirePath::parse("c").unwrap().parent().unwrap().is_root());
        assert!(WirePath::root().parent().is_none());
        assert!(p.starts_with(&WirePath::parse("a/b").unwrap()));
        assert!(!p.starts_with(&WirePath::parse("a/bc").unwrap()));
        assert!(p.starts_with(&WirePath::root()));
    }
}

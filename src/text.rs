//! Untrusted text made safe to print.
//!
//! Names, certificate subjects and error messages that came from a peer
//! reach terminals and log files. Raw, their control characters could clear
//! a screen, set a window title (OSC), move the cursor or forge whole log
//! lines (the class of scp's CVE-2019-6109/6110). [`escape`] writes every
//! such character as a visible escape instead, so what is printed is exactly
//! one line of inert text. Everything a peer controls goes through it
//! before it is formatted for a person or a log.

use std::borrow::Cow;
use std::fmt;

/// True for characters that a terminal or a log reader may act on: C0 and
/// C1 controls, DEL, and the Unicode formatting characters that reorder or
/// hide text (bidirectional overrides and isolates, zero-width marks).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates, deprecated formats
            | '\u{FEFF}'
            // Other characters that display as nothing (Unicode's default
            // ignorables and fillers), so two names may look the same. The
            // emoji variation selectors U+FE00..FE0F stay: names use them.
            | '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
            | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{3164}' | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}')
}

/// `s` with every unsafe character written as `\n`, `\t`, `\r`, `\xHH` or
/// `\u{HHHH}`, and backslashes doubled only when something was escaped (so
/// ordinary text, the common case, is returned as is and unallocated).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A `Display` wrapper that escapes as it formats: `format!("{}", Safe(s))`.
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(escape("dist/app-1.2.tar.gz"), Cow::Borrowed(_)));
        assert_eq!(escape("café ü 日本"), "café ü 日本");
        assert_eq!(escape(r"a\b"), r"a\b");
    }

    #[test]
    fn controls_become_visible_escapes() {
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape("\x7f"), "\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\x9b31m"); // C1 CSI
        assert_eq!(escape("\u{202e}gpj.exe"), "\\u{202e}gpj.exe");
        // Characters that display as nothing, so two names look alike.
        for c in ['\u{2060}', '\u{061c}', '\u{00ad}', '\u{3164}', '\u{e0041}'] {
            assert!(escape(&format!("report{c}.txt")).contains("\\"), "{c:?}");
        }
        assert_eq!(escape("❤\u{fe0f}.txt"), "❤\u{fe0f}.txt"); // emoji presentation stays
        // Once escaping, a literal backslash is doubled so the output is
        // unambiguous.
        assert_eq!(escape("\\x1b\x1b"), "\\\\x1b\\x1b");
    }

    #[test]
    fn nothing_unsafe_survives() {
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            assert!(!escape(&s).chars().any(is_unsafe), "{c:?}");
        }
    }
}

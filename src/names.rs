//! Names a receiver's filesystem cannot hold as sent. Windows reserves
//! device names (`CON`, `NUL`, `COM1`...) in every folder, with or without
//! an extension, drops trailing dots and spaces, and forbids `<>:"|?*`;
//! such a name would be written as another file, or not at all. A
//! receiver refuses them at the header, before anything is written.
//!
//! The rules are plain functions so every platform can test them; a
//! receiver applies them where its filesystem needs them ([`WINDOWS`]).

use crate::protocol::WirePath;

/// Whether this build writes to Windows filesystems.
pub const WINDOWS: bool = cfg!(windows);

/// Device names Windows reserves, in any case, with or without extension.
const RESERVED: [&str; 4] = ["CON", "PRN", "AUX", "NUL"];
/// Reserved with one digit after them (0-9, and the superscripts ¹²³).
const NUMBERED: [&str; 2] = ["COM", "LPT"];
/// The console's own names.
const CONSOLE: [&str; 2] = ["CONIN$", "CONOUT$"];

/// Why Windows cannot hold the name `component`, if it cannot.
pub fn windows_refusal(component: &str) -> Option<String> {
    if let Some(c) = component.chars().find(|c| "<>:\"|?*".contains(*c)) {
        return Some(format!("'{component}': Windows does not allow '{c}' in a name"));
    }
    if component.ends_with('.') || component.ends_with(' ') {
        return Some(format!("'{component}': Windows drops a trailing dot or space, so it would be another name"));
    }
    let stem = component.split('.').next().unwrap_or(component).trim_end_matches(' ');
    let numbered = NUMBERED.iter().any(|n| {
        let (head, tail) = (stem.get(..3), stem.get(3..).unwrap_or(""));
        let mut rest = tail.chars();
        let one =
            rest.next().is_some_and(|c| c.is_ascii_digit() || matches!(c, '¹' | '²' | '³')) && rest.next().is_none();
        head.is_some_and(|h| h.eq_ignore_ascii_case(n)) && one
    });
    if numbered || RESERVED.iter().chain(CONSOLE.iter()).any(|r| r.eq_ignore_ascii_case(stem)) {
        return Some(format!("'{component}': Windows reserves the device name {}", stem.to_ascii_uppercase()));
    }
    if is_short_name(component) {
        return Some(format!(
            "'{component}': has the form of a Windows short (8.3) name, which can name another file or folder \
             (e.g. XFER~1 for .xfer) past the path rules"
        ));
    }
    None
}

/// The form of the short names Windows makes up for long ones (`PROGRA~1`,
/// `LONGFI~2.TXT`): at most 8 characters with a `~` and digits at the end,
/// and an extension of at most 3.
fn is_short_name(component: &str) -> bool {
    let (stem, ext) = component.rsplit_once('.').unwrap_or((component, ""));
    let Some((head, digits)) = stem.rsplit_once('~') else { return false };
    stem.len() <= 8
        && ext.len() <= 3
        && !head.is_empty()
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The first component of `path` Windows cannot hold, with the reason.
pub fn windows_path_refusal(path: &WirePath) -> Option<String> {
    path.components().find_map(windows_refusal).map(|why| format!("{path}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_refuses_devices_trailing_dots_and_its_forbidden_characters() {
        for bad in [
            "CON",
            "con",
            "Nul.txt",
            "com1",
            "COM0",
            "LPT9.tar.gz",
            "com¹",
            "lpt³.log",
            "CONIN$",
            "conout$.x",
            "aux ",
            "a.",
            "b ",
            "x:y",
            "q?",
            "a<b",
            "p|q",
            "s*",
            "XFER~1",
            "progra~1",
            "LONGFI~2.TXT",
            "A~12345",
        ] {
            assert!(windows_refusal(bad).is_some(), "{bad}");
        }
        for good in [
            "CONSOLE",
            "com10",
            "LPT",
            "nul_x",
            "a.b",
            ".hidden",
            "café",
            "x y",
            "COMA",
            "com¹¹",
            "~1",
            "a~b",
            "file~1.backup",
            "verylong~1",
        ] {
            assert!(windows_refusal(good).is_none(), "{good}");
        }
        let p = WirePath::parse("dist/aux.c/main.rs").unwrap();
        assert!(windows_path_refusal(&p).unwrap().contains("reserves the device name AUX"));
    }
}

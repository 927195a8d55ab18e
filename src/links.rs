//! Symbolic links sent as links (`--links`): which targets xfer carries,
//! and whether one stays inside the tree being sent. Decided on the text
//! of the target alone, the way a receiver that never follows links must:
//! the target is resolved lexically from the link's folder and must not
//! leave the tree (the sender's check) or the root (the receiver's).
//! Neither side ever follows a link to decide.
//!
//! Text is only a faithful account of where the kernel goes when no link
//! on the way changes direction. So a target may climb only first (`..`
//! leading, never after a name: `s/../x` through a link `s -> .` would
//! climb from somewhere else), has no `.`, and may not lead to a folder
//! the link is in (a link to an ancestor, `r -> ..`, would let another
//! link's names reach places no text shows: `r/.xfer`). Each hop of a
//! chain of such links then stays where its own text says.

use crate::protocol::WirePath;

/// Longest link target carried (Linux allows 4095 bytes; real relative
/// targets inside a tree are far shorter).
pub const MAX_TARGET_LEN: usize = 1024;

/// Why `target` is not one xfer carries, if it is not: it must be
/// relative, non-empty UTF-8, with no empty components; `..` only at the
/// start, then at least one name the protocol's path rules accept; no `.`.
pub fn check_target(target: &str) -> Result<(), &'static str> {
    if target.is_empty() || target.len() > MAX_TARGET_LEN {
        return Err("its target is empty or too long");
    }
    if target.starts_with('/') {
        return Err("its target is an absolute path");
    }
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" => return Err("its target has an empty component"),
            "." => return Err("its target has a '.' component"),
            ".." if named => return Err("its target climbs with '..' after a name"),
            ".." => {}
            name if WirePath::parse(name).is_err() => return Err("its target has a name the protocol cannot carry"),
            _ => named = true,
        }
    }
    if !named {
        return Err("its target is a folder above it");
    }
    Ok(())
}

/// Where a link at `link` with text `target` leads, as components from the
/// root, or `None` if `..` climbs above the root.
pub fn resolve<'a>(link: &'a WirePath, target: &'a str) -> Option<Vec<&'a str>> {
    let mut at: Vec<&str> = link.components().collect();
    at.pop(); // the link's own name: a target is read from its folder
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                at.pop()?;
            }
            name => at.push(name),
        }
    }
    Some(at)
}

/// True when the link at `link` leads to `top` or below it, and not to a
/// folder the link is in (see the module's notes).
pub fn within(top: &WirePath, link: &WirePath, target: &str) -> bool {
    let Some(to) = resolve(link, target) else { return false };
    let top: Vec<&str> = top.components().collect();
    let folder: Vec<&str> = link.components().collect();
    let ancestor = to.len() < folder.len() && folder[..to.len()] == to[..];
    !ancestor && to.len() >= top.len() && to[..top.len()] == top[..]
}

/// The tree a pull's links must stay in, named as the pull names items
/// (from the parent of what was asked): the entry asked for, or with
/// `whole_destination` (a sync) everything the destination receives.
pub fn pulled_tree(asked: &WirePath, whole_destination: bool) -> WirePath {
    match asked.file_name() {
        Some(name) if !whole_destination => WirePath::root().join(name).unwrap_or_default(),
        _ => WirePath::root(),
    }
}

/// The receiver's check of a link it is asked to make under `top` (the
/// root for a server, the folder asked for in a pull): a target xfer
/// carries, leading inside `top`, and not into the staging area `hide`.
pub fn acceptable(top: &WirePath, link: &WirePath, target: &str, hide: Option<&str>) -> Result<(), String> {
    check_target(target).map_err(|why| format!("{link}: not a link xfer makes: {why}"))?;
    if !within(top, link, target) {
        return Err(format!(
            "{link}: its target leads outside {}",
            if top.is_root() { "the root" } else { top.as_str() }
        ));
    }
    // Any component named like the staging area, wherever: through other
    // links it may be the root's.
    if let Some(hide) = hide
        && target.split('/').any(|c| c.eq_ignore_ascii_case(hide))
    {
        return Err(format!("{link}: its target leads into the staging area"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> WirePath {
        WirePath::parse(s).unwrap()
    }

    #[test]
    fn targets_resolve_lexically_from_the_links_folder() {
        assert_eq!(resolve(&p("d/a/l"), "../b/c"), Some(vec!["d", "b", "c"]));
        assert_eq!(resolve(&p("d/l"), "./x"), Some(vec!["d", "x"]));
        assert_eq!(resolve(&p("l"), ".."), None);
        assert_eq!(resolve(&p("d/l"), "../../x"), None);
    }

    #[test]
    fn only_targets_inside_the_tree_are_within_it() {
        let top = p("to/dist");
        assert!(within(&top, &p("to/dist/a/l"), "../b"));
        // A link to a folder it is in: a pivot for other links' names.
        assert!(!within(&top, &p("to/dist/l"), "."));
        assert!(!within(&top, &p("to/dist/a/l"), "../a"));
        assert!(!within(&top, &p("to/dist/a/b/l"), "../.."));
        assert!(!within(&top, &p("to/dist/l"), "../other"));
        assert!(!within(&top, &p("to/dist/a/l"), "../../../x"));
        assert!(within(&WirePath::root(), &p("a/l"), "../b"));
    }

    #[test]
    fn only_plain_relative_targets_are_carried() {
        assert!(check_target("../b/c").is_ok());
        assert!(check_target("../../b").is_ok());
        // The chains a review found: names then `..`, `.`, bare climbs.
        let chain = "s/s/s/../../../../etc/passwd";
        for bad in
            ["", "/etc/passwd", "a//b", "a/", "a\0b", &"x".repeat(MAX_TARGET_LEN + 1), chain, ".", "./x", "..", "../.."]
        {
            assert!(check_target(bad).is_err(), "{bad:?}");
        }
        assert!(acceptable(&WirePath::root(), &p("l"), ".xfer/partial/x", Some(".xfer")).is_err());
        assert!(acceptable(&WirePath::root(), &p("d/l"), "../.XFER", Some(".xfer")).is_err());
        assert!(acceptable(&WirePath::root(), &p("d/l"), "../e", Some(".xfer")).is_ok());
        assert!(acceptable(&WirePath::root(), &p("d/stg"), "r/.xfer/partial", Some(".xfer")).is_err());
        assert!(acceptable(&p("d"), &p("d/l"), "../e", None).is_err());
    }
}

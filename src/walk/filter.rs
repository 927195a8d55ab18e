//! What a sender leaves out (`--exclude`, `--include`, `--exclude-from`,
//! and a pull's `FILTER`): gitignore lines through the `ignore` crate,
//! with the bounds a server needs before it runs a peer's patterns.

/// What a sender leaves out: gitignore-style patterns (`--exclude`,
/// `--exclude-from`, and `--include` as their `!` exceptions), matched
/// against each path as the user named it (`dist/app.js` for `push dist`).
#[derive(Debug, Clone)]
pub struct Filter {
    rules: std::sync::Arc<ignore::gitignore::Gitignore>,
    /// The lines it was built from, in order: what a pull sends the server
    /// (`FILTER`), which builds the same filter from them.
    text: std::sync::Arc<str>,
}

impl Filter {
    /// The patterns of each file in `from` (one per line, as in a
    /// `.gitignore`), then each of `exclude`, then each of `include` as an
    /// exception (`!PATTERN`): as in gitignore, a later line wins. `None`
    /// when there are no patterns at all.
    pub fn new(exclude: &[String], include: &[String], from: &[std::path::PathBuf]) -> Result<Option<Filter>, String> {
        if exclude.is_empty() && include.is_empty() && from.is_empty() {
            return Ok(None);
        }
        let mut lines = Vec::new();
        for f in from {
            let text = std::fs::read_to_string(f).map_err(|e| format!("--exclude-from {}: {e}", f.display()))?;
            lines.extend(
                text.trim_start_matches('\u{feff}')
                    .lines()
                    .map(|l| (format!("--exclude-from {}", f.display()), l.to_owned())),
            );
        }
        lines.extend(exclude.iter().map(|p| (format!("--exclude '{p}'"), p.clone())));
        lines.extend(include.iter().map(|p| (format!("--include '{p}'"), format!("!{p}"))));
        let mut b = ignore::gitignore::GitignoreBuilder::new("/");
        for (flag, line) in &lines {
            // One pattern a line, here and in what a pull sends.
            if line.contains(['\n', '\r']) {
                return Err(format!("{flag}: a pattern cannot span lines"));
            }
            check_pattern(line).map_err(|why| format!("{flag}: {why}"))?;
            b.add_line(None, line).map_err(|e| format!("{flag}: {e}"))?;
        }
        let count = lines.iter().filter(|(_, l)| is_pattern(l)).count();
        if count > MAX_PATTERNS {
            return Err(format!("{count} patterns: at most {MAX_PATTERNS} are taken"));
        }
        let rules = b.build().map_err(|e| e.to_string())?;
        let text = lines.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n");
        Ok(Some(Filter { rules: std::sync::Arc::new(rules), text: text.into() }))
    }

    /// A filter from the lines of [`Filter::text`] (a pull's `FILTER`);
    /// `None` when there are no patterns.
    pub fn from_text(text: &str) -> Result<Option<Filter>, String> {
        let mut b = ignore::gitignore::GitignoreBuilder::new("/");
        let (mut any, mut count) = (false, 0);
        for line in text.split('\n') {
            check_pattern(line).map_err(|why| format!("pattern '{line}': {why}"))?;
            b.add_line(None, line).map_err(|e| format!("pattern '{line}': {e}"))?;
            any |= !line.trim().is_empty();
            count += usize::from(is_pattern(line));
        }
        if count > MAX_PATTERNS {
            return Err(format!("{count} patterns: at most {MAX_PATTERNS} are taken"));
        }
        if !any {
            return Ok(None);
        }
        let rules = b.build().map_err(|e| e.to_string())?;
        Ok(Some(Filter { rules: std::sync::Arc::new(rules), text: text.into() }))
    }

    /// The pattern lines, in order, as a `.gitignore` would hold them.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when `path` (as the user named it, `/`-separated) is left out.
    pub fn excludes(&self, path: &str, is_dir: bool) -> bool {
        // A path inside an excluded folder is excluded too (`cache/` covers
        // `cache/a`, whatever a later `!a` says, as in git): a walk never
        // goes in, and a sync must not delete there.
        let full = std::path::Path::new("/").join(path);
        let mut parents = full.ancestors().skip(1).filter(|p| p.parent().is_some());
        parents.any(|p| self.rules.matched(p, true).is_ignore()) || self.rules.matched(&full, is_dir).is_ignore()
    }
}

/// Most patterns a filter takes, and most wildcards in one: each pattern
/// becomes a regular expression a server runs on every name it sends, and
/// runs of `?` and `*` make those expensive (a review measured 600 such
/// lines at 300 MB and seconds per request). Real ignore files are well
/// within both.
pub const MAX_PATTERNS: usize = 64;
const MAX_WILDCARDS: usize = 4;

/// A line that is a pattern, as the `ignore` crate reads one: a comment
/// only with `#` in its first column, blank only when nothing but
/// trailing spaces (` #x` is a live pattern, and counts as one).
pub fn is_pattern(line: &str) -> bool {
    !line.starts_with('#') && !line.trim_end().is_empty()
}

/// Refuses a pattern with more wildcards than [`MAX_WILDCARDS`].
fn check_pattern(line: &str) -> Result<(), String> {
    let wild = line.chars().filter(|c| matches!(c, '*' | '?' | '[')).count();
    if is_pattern(line) && wild > MAX_WILDCARDS {
        return Err(format!("{wild} wildcards: at most {MAX_WILDCARDS} in one pattern are taken"));
    }
    Ok(())
}

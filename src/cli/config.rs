//! Where a command finds identities and hosts when it is not told: the
//! per-user config folder (`$XDG_CONFIG_HOME/xfer`, i.e. `~/.config/xfer`
//! on Linux, the platform's equivalent elsewhere, found by `directories`),
//! its `certs/`, and its `config.toml` of host aliases, ssh_config style.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// The per-user config folder, when the platform has one.
pub(crate) fn user_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "xfer").map(|d| d.config_dir().to_path_buf())
}

/// Where identities live when neither `--certs` nor `$XFER_CERTS` says:
/// `./certs` when it exists (a project's own PKI), else the per-user
/// folder. Both reading and writing commands use it, so what `keygen` or
/// `enroll` write without `--dir` is what the others find.
pub(crate) fn default_certs() -> PathBuf {
    let local = PathBuf::from("certs");
    if local.is_dir() {
        return local;
    }
    user_dir().map_or(local, |d| d.join("certs"))
}

/// [`default_certs`], refusing a `./certs` that is not this user's to
/// trust: found by just being in the current folder, one planted in a
/// shared folder would otherwise choose, silently, whom a command trusts
/// and which key it signs with.
pub(crate) fn default_certs_checked() -> Result<PathBuf, Error> {
    let dir = default_certs();
    if dir.is_relative() {
        check_owned(&dir, "./certs", "pass --certs ./certs to use it anyway")?;
    }
    Ok(dir)
}

/// Refuses `path` when another user owns it or everyone may write it:
/// whoever can write it decides what this command trusts (ssh's
/// StrictModes, less its group rule: user-private groups are common).
pub(crate) fn check_owned(path: &Path, what: &str, anyway: &str) -> Result<(), Error> {
    let why = crate::platform::untrusted_because(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let Some(why) = why else { return Ok(()) };
    Err(Error::Identity {
        what: what.to_owned(),
        message: format!(
            "not used: {why}, so it could choose whom this command trusts; {anyway}, or make it yours \
             (chown, chmod o-w)"
        ),
    })
}

/// Words for the places [`default_certs`] looks, for messages.
pub(crate) fn certs_lookup_words() -> String {
    match user_dir() {
        Some(d) => format!("./certs and {}", d.join("certs").display()),
        None => "./certs".to_owned(),
    }
}

/// `config.toml`: `$XFER_CONFIG` when set, else in the per-user folder.
fn config_file() -> Option<PathBuf> {
    match std::env::var_os("XFER_CONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => user_dir().map(|d| d.join("config.toml")),
    }
}

/// The config file. Unknown keys are errors, so a misspelt `adress` is
/// reported instead of silently connecting somewhere else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    host: BTreeMap<String, HostAlias>,
}

/// `[host.ALIAS]`: what `xfer push ALIAS …` means.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostAlias {
    /// HOST or HOST:PORT to connect to.
    pub address: String,
    /// The name the server's certificate must carry, if not the address's host.
    pub server_name: Option<String>,
    /// Which identity to use.
    pub name: Option<String>,
    /// Folder of identities (`~/` is the home folder; relative paths are
    /// taken from the config file's folder).
    pub certs: Option<PathBuf>,
}

/// A server as typed, after alias lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// HOST or HOST:PORT to connect to.
    pub address: String,
    pub alias: Option<HostAlias>,
}

/// Looks `host` up among the aliases of the config file, which must parse
/// whenever it exists (a broken file is an error on every client command,
/// as ssh does, not a silent fall-back).
pub(crate) fn resolve_host(host: &str) -> Result<Target, Error> {
    let Some(path) = config_file() else { return Ok(Target { address: host.to_owned(), alias: None }) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("XFER_CONFIG").is_none() => {
            return Ok(Target { address: host.to_owned(), alias: None });
        }
        Err(e) => return Err(Error::io(format!("cannot read the config file {}", path.display()), e)),
    };
    check_owned(&path, &path.display().to_string(), "set $XFER_CONFIG to another file")?;
    let config = parse(&text, &path)?;
    Ok(match config.host.get(host) {
        Some(alias) => Target { address: alias.address.clone(), alias: Some(alias.clone()) },
        None => Target { address: host.to_owned(), alias: None },
    })
}

fn parse(text: &str, path: &Path) -> Result<ConfigFile, Error> {
    let mut config: ConfigFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_owned();
        let place =
            e.span().map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1)).unwrap_or_default();
        Error::Usage(format!("config file {}{place}: {message}", path.display()))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for (name, alias) in &mut config.host {
        if alias.address.trim().is_empty() {
            return Err(Error::Usage(format!("config file {}: [host.{name}] has an empty address", path.display())));
        }
        if let Some(certs) = &alias.certs {
            alias.certs = Some(expand(certs, base));
        }
    }
    Ok(config)
}

/// `~/x` under the home folder, a relative path under `base`.
fn expand(path: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf())
    {
        return home.join(rest);
    }
    if path.is_relative() { base.join(path) } else { path.to_path_buf() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_parse_and_relative_certs_follow_the_file() {
        let text = "[host.artifacts]\naddress = \"files.example.org:5001\"\nserver_name = \"files\"\n\
                    name = \"runner-7\"\ncerts = \"pki\"\n";
        let c = parse(text, Path::new("/etc/xfer/config.toml")).unwrap();
        let a = &c.host["artifacts"];
        assert_eq!(a.address, "files.example.org:5001");
        assert_eq!(a.server_name.as_deref(), Some("files"));
        assert_eq!(a.name.as_deref(), Some("runner-7"));
        assert_eq!(a.certs.as_deref(), Some(Path::new("/etc/xfer/pki")));
    }

    #[test]
    fn unknown_keys_and_missing_addresses_are_errors() {
        let typo = parse("[host.a]\nadress = \"x\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(typo.contains("adress") && typo.contains("line 2"), "{typo}");
        let top = parse("[hosts.a]\naddress = \"x\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(top.contains("hosts"), "{top}");
        let none = parse("[host.a]\nname = \"x\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(none.contains("address"), "{none}");
        let empty = parse("[host.a]\naddress = \" \"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(empty.contains("empty address"), "{empty}");
    }
}

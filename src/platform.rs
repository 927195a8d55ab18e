//! What differs between platforms outside the storage core ([`crate::beneath`]):
//! file modes, ownership, descriptor limits. Unix keeps modes and owners;
//! Windows has neither (its files inherit the folder's access control list),
//! so there these are no-ops and the README says what that means for keys.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::path::Path;

/// Options that create a file readable by its owner only (`private`), or
/// by everyone (0644).
pub fn file_options(private: bool) -> OpenOptions {
    #[allow(unused_mut)] // no modes to set on Windows
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, if private { 0o600 } else { 0o644 });
    let _ = private;
    o
}

/// A builder for folders only their owner may enter (0700).
pub fn private_dir_builder() -> DirBuilder {
    #[allow(unused_mut)]
    let mut b = DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b
}

/// Sets a file's permission bits on Unix. Windows keeps none: its
/// read-only attribute would stop the file from ever being replaced or
/// removed by xfer (a rename over it or a delete is refused).
pub fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    return f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(not(unix))]
    {
        let _ = (f, mode);
        Ok(())
    }
}

/// The permission bits of `path` (Unix), or `None` where there are none.
pub fn mode_of(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    return std::fs::metadata(path).ok().map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Makes renames in the folder `dir` durable. Windows cannot open a
/// folder as a file to sync it (NTFS journals renames itself).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    return File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Why `path` must not be trusted: another user owns it, or everyone may
/// write to it. `Ok(None)` when it is fine, or where there are no owners.
pub fn untrusted_because(path: &Path) -> io::Result<Option<&'static str>> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != rustix::process::getuid().as_raw() {
            return Ok(Some("it belongs to another user"));
        }
        if meta.mode() & 0o002 != 0 {
            return Ok(Some("every user may write to it"));
        }
    }
    let _ = meta;
    Ok(None)
}

/// Many connections, each holding a few folders open while it installs a
/// group of files, need more descriptors than the common soft limit of
/// 1024; raise it to the hard limit, as long-running servers do.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
        }
    }
}

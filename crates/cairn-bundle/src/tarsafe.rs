//! Unpacking a `*.tar.zst` payload into a directory, refusing what could escape it or
//! plant devices: absolute paths, `..`, links pointing outside, device nodes unless the
//! manifest allows them. Ownership, modes and extended attributes (ACLs included) are
//! kept as the archive gives them. Nothing is followed: a symlink in the tree is never
//! written through.

use std::io::Read;
use std::path::{Component, Path};

use crate::BundleError;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Refuses absolute paths and `..`; returns the normalized relative path.
fn check_path(p: &Path) -> Result<(), BundleError> {
    let shown = p.display().to_string();
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::AbsolutePath(shown));
            }
            Component::ParentDir => return Err(BundleError::PathTraversal(shown)),
            _ => {}
        }
    }
    Ok(())
}

/// A relative symlink target must stay inside the tree when resolved from the link's
/// directory; absolute targets are resolved inside the root when it boots.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth: i64 = link
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count() as i64
        })
        .unwrap_or(0);
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Unpacks `input` (zstd-compressed tar) into `dest`. Returns the number of entries.
pub fn extract_tar_zst(
    input: impl Read,
    dest: &Path,
    allow_devices: bool,
) -> Result<usize, BundleError> {
    let decoder = zstd::Decoder::new(input).map_err(io("starting zstd"))?;
    extract_tar(decoder, dest, allow_devices)
}

/// Unpacks an uncompressed tar stream into `dest`.
pub fn extract_tar(
    input: impl Read,
    dest: &Path,
    allow_devices: bool,
) -> Result<usize, BundleError> {
    let mut ar = tar::Archive::new(input);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let mut n = 0;
    for entry in ar.entries().map_err(io("reading the archive"))? {
        let mut entry = entry.map_err(io("reading the archive"))?;
        let path = entry
            .path()
            .map_err(io("reading an entry name"))?
            .into_owned();
        check_path(&path)?;
        let shown = path.display().to_string();
        let kind = entry.header().entry_type();
        if (kind.is_block_special() || kind.is_character_special()) && !allow_devices {
            return Err(BundleError::DeviceNode(shown));
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(io("reading a link target"))?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let inside = if kind.is_hard_link() {
                check_path(&target).is_ok()
            } else {
                link_stays_inside(&path, &target)
            };
            if !inside {
                return Err(BundleError::LinkOutside {
                    path: shown,
                    target: target.display().to_string(),
                });
            }
        }
        // `unpack_in` also refuses to write through a symlinked directory.
        if !entry.unpack_in(dest).map_err(io("unpacking"))? {
            return Err(BundleError::PathTraversal(shown));
        }
        n += 1;
    }
    Ok(n)
}

/// Packs a directory as a zstd-compressed tar, keeping ownership, modes and symlinks.
pub fn pack_dir(dir: &Path, out: impl std::io::Write) -> Result<(), BundleError> {
    let enc = zstd::Encoder::new(out, 3).map_err(io("starting zstd"))?;
    let mut b = tar::Builder::new(enc);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir).map_err(io("packing the tree"))?;
    let enc = b.into_inner().map_err(io("finishing the archive"))?;
    enc.finish().map_err(io("finishing zstd"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert!(link_stays_inside(
            Path::new("usr/bin/x"),
            Path::new("../lib/y")
        ));
        assert!(link_stays_inside(
            Path::new("etc/alt"),
            Path::new("/usr/bin/y")
        ));
        assert!(!link_stays_inside(
            Path::new("etc/x"),
            Path::new("../../outside")
        ));
        assert!(!link_stays_inside(Path::new("x"), Path::new("..")));
    }
}

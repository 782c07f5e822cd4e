//! The GRUB environment block: a 1024-byte file GRUB reads with `load_env` and writes with
//! `save_env`. cairn keeps its boot selection state there, on a non-ZFS boot partition
//! (GRUB cannot write on ZFS).
//!
//! Format (GRUB `envblk.c`): `# GRUB Environment Block\n`, then `name=value\n` lines with
//! `\` escaping `\` and newlines, then `#` padding to 1024 bytes. cairn's variables fit in
//! the first 512 bytes, so even a torn two-sector write leaves either the old or the new
//! state: the second sector is only padding.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const SIZE: usize = 1024;
pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// What must stay within the first sector for torn-write safety.
pub const SAFE_LEN: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("not a GRUB environment block: {0}")]
    Corrupt(String),
    #[error("the environment block would be {len} bytes; cairn keeps it within {max}")]
    TooLarge { len: usize, max: usize },
    #[error("variable name {0:?} is not valid (letters, digits and '_' only)")]
    BadName(String),
}

/// Variables in the order they appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EnvError> {
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(EnvError::BadName(name.to_owned()));
        }
        self.vars.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses a block as GRUB does: signature first, then lines up to the padding.
    pub fn parse(block: &[u8]) -> Result<Self, EnvError> {
        if block.len() != SIZE {
            return Err(EnvError::Corrupt(format!(
                "{} bytes instead of {SIZE}",
                block.len()
            )));
        }
        let text = block
            .strip_prefix(SIGNATURE.as_bytes())
            .ok_or_else(|| EnvError::Corrupt("no signature".into()))?;
        let mut env = Env::default();
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'#' {
                // A comment line, or the padding.
                while i < text.len() && text[i] != b'\n' {
                    i += 1;
                }
                i += 1;
                continue;
            }
            let mut line = Vec::new();
            while i < text.len() && text[i] != b'\n' {
                if text[i] == b'\\' && i + 1 < text.len() {
                    i += 1;
                }
                line.push(text[i]);
                i += 1;
            }
            i += 1;
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some((k, v)) = line.split_once('=') {
                env.vars.insert(k.to_owned(), v.to_owned());
            }
        }
        Ok(env)
    }

    /// Serializes to exactly [`SIZE`] bytes, refusing content beyond [`SAFE_LEN`].
    pub fn to_block(&self) -> Result<[u8; SIZE], EnvError> {
        let mut text = String::from(SIGNATURE);
        for (k, v) in &self.vars {
            text.push_str(k);
            text.push('=');
            for c in v.chars() {
                if c == '\\' || c == '\n' {
                    text.push('\\');
                }
                text.push(c);
            }
            text.push('\n');
        }
        if text.len() > SAFE_LEN {
            return Err(EnvError::TooLarge {
                len: text.len(),
                max: SAFE_LEN,
            });
        }
        let mut block = [b'#'; SIZE];
        block[..text.len()].copy_from_slice(text.as_bytes());
        Ok(block)
    }
}

/// Reads an environment file; a missing file is an empty environment.
pub fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut b = Vec::new();
            f.read_to_end(&mut b)?;
            Ok(Some(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the block the way GRUB does: in place over the existing 1024 bytes, then
/// `fdatasync`. The file keeps its blocks, which GRUB's `save_env` needs. A missing or
/// wrong-sized file is replaced atomically (temp file, fsync, rename, fsync directory).
pub fn write(path: &Path, block: &[u8; SIZE]) -> std::io::Result<()> {
    let in_place = std::fs::metadata(path)
        .map(|m| m.len() == SIZE as u64)
        .unwrap_or(false);
    if in_place {
        let mut f = OpenOptions::new().write(true).open(path)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(block)?;
        return f.sync_data();
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(block)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_escapes() {
        let mut e = Env::default();
        e.set("cairn_default", "2.0").unwrap();
        e.set("odd", "a\\b\nc").unwrap();
        let b = e.to_block().unwrap();
        assert_eq!(b.len(), SIZE);
        assert!(b.starts_with(SIGNATURE.as_bytes()));
        assert_eq!(b[SIZE - 1], b'#');
        assert_eq!(Env::parse(&b).unwrap(), e);
    }

    #[test]
    fn refuses_bad_blocks_and_names() {
        assert!(matches!(
            Env::parse(&[0u8; SIZE]),
            Err(EnvError::Corrupt(_))
        ));
        assert!(matches!(
            Env::parse(b"# GRUB Environment Block\n"),
            Err(EnvError::Corrupt(_))
        ));
        let mut e = Env::default();
        assert!(e.set("bad name", "x").is_err());
        e.set("big", &"x".repeat(600)).unwrap();
        assert!(matches!(e.to_block(), Err(EnvError::TooLarge { .. })));
    }

    #[test]
    fn reads_what_grub_editenv_writes_format() {
        // The layout grub-editenv produces (comment line included).
        let mut text = String::from(SIGNATURE);
        text.push_str("# WARNING: Do not edit this file by tools other than grub-editenv!!!\n");
        text.push_str("saved_entry=x\ncairn_left=2\n");
        let mut block = [b'#'; SIZE];
        block[..text.len()].copy_from_slice(text.as_bytes());
        let e = Env::parse(&block).unwrap();
        assert_eq!(e.get("cairn_left"), Some("2"));
        assert_eq!(e.get("saved_entry"), Some("x"));
    }
}

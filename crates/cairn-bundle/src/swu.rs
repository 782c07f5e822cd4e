//! SWU files: a `newc` cpio archive whose first member is `sw-description` (libconfig
//! text naming the version and the hardware it is for), then the images. Update servers
//! that speak DDI parse that header to learn an artifact's version and compatibility
//! (goosebit accepts only SWU and RAUC files), so a cairn bundle travels as the single
//! image of an SWU file; the appliance takes it back out while downloading, without
//! storing the archive.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// The `newc` magic (no checksums).
const NEWC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum SwuError {
    #[error("not an SWU file: {0}")]
    Format(String),
    #[error("the SWU file holds no cairn bundle (no member ending in .cairn)")]
    NoBundle,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What the `sw-description` says about the bundle inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub version: String,
    /// Hardware ids the bundle is for (its manifest's `hardware`).
    pub hardware: Vec<String>,
    /// The bundle's file name inside the archive (ends in `.cairn`).
    pub filename: String,
    pub sha256: String,
}

impl Description {
    /// The libconfig text (quotes and backslashes escaped).
    pub fn render(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let hw: Vec<String> = self.hardware.iter().map(|h| q(h)).collect();
        format!(
            "software =\n{{\n  version = {};\n  hardware-compatibility = [ {} ];\n  images: (\n    {{\n      filename = {};\n      type = \"cairn-bundle\";\n      sha256 = {};\n    }}\n  );\n}};\n",
            q(&self.version),
            hw.join(", "),
            q(&self.filename),
            q(&self.sha256)
        )
    }
}

fn header(out: &mut dyn Write, ino: u32, name: &str, mode: u32, size: u64) -> io::Result<()> {
    let size = u32::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "newc members are < 4 GiB"))?;
    let namesize = name.len() as u32 + 1;
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08X}"));
    }
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + namesize as u64)
}

fn pad(out: &mut dyn Write, len: u64) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n as usize])
}

/// Writes an SWU file holding `bundle` (`size` bytes) as described by `desc`; the
/// description's `sha256` is what the caller computed (see [`sha256_of`]).
pub fn write(
    out: &mut dyn Write,
    desc: &Description,
    bundle: &mut dyn Read,
    size: u64,
) -> Result<(), SwuError> {
    if !desc.filename.ends_with(".cairn") || desc.filename.contains('/') {
        return Err(SwuError::Format(format!(
            "the bundle's name '{}' must be a plain file name ending in .cairn",
            desc.filename
        )));
    }
    let text = desc.render();
    header(out, 1, "sw-description", 0o100644, text.len() as u64)?;
    out.write_all(text.as_bytes())?;
    pad(out, text.len() as u64)?;
    header(out, 2, &desc.filename, 0o100644, size)?;
    let copied = io::copy(&mut bundle.take(size), out)?;
    if copied != size {
        return Err(SwuError::Format(format!(
            "the bundle ended after {copied} of {size} bytes"
        )));
    }
    pad(out, size)?;
    header(out, 0, TRAILER, 0, 0)?;
    Ok(())
}

/// SHA-256 of everything `r` yields, in hex, and its length.
pub fn sha256_of(r: &mut dyn Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((format!("{:x}", h.finalize()), n))
}

/// One member's header.
struct Member {
    name: String,
    size: u64,
}

fn read_header(r: &mut dyn Read) -> Result<Member, SwuError> {
    let mut h = [0u8; 110];
    r.read_exact(&mut h)?;
    if &h[..6] != NEWC && &h[..6] != b"070702" {
        return Err(SwuError::Format("no cpio newc header".into()));
    }
    let field = |i: usize| -> Result<u64, SwuError> {
        let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8])
            .map_err(|_| SwuError::Format("a header field is not hex".into()))?;
        u64::from_str_radix(s, 16).map_err(|_| SwuError::Format("a header field is not hex".into()))
    };
    let size = field(6)?;
    let namesize = field(11)?;
    if namesize == 0 || namesize > 4096 {
        return Err(SwuError::Format(format!(
            "a member name of {namesize} bytes"
        )));
    }
    let mut name = vec![0u8; namesize as usize];
    r.read_exact(&mut name)?;
    skip(r, (4 - (110 + namesize) % 4) % 4)?;
    name.pop(); // the NUL
    let name = String::from_utf8(name)
        .map_err(|_| SwuError::Format("a member name is not UTF-8".into()))?;
    Ok(Member { name, size })
}

fn skip(r: &mut dyn Read, n: u64) -> io::Result<()> {
    let skipped = io::copy(&mut r.take(n), &mut io::sink())?;
    if skipped == n {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// Reads an SWU stream up to its cairn bundle: returns the `sw-description` text and the
/// bundle's name and size; `r` is then positioned at the bundle's first byte (read
/// exactly `size` bytes from it, e.g. with `Read::take`).
pub fn open_bundle(r: &mut dyn Read) -> Result<(String, String, u64), SwuError> {
    let first = read_header(r)?;
    if first.name != "sw-description" || first.size > 1 << 20 {
        return Err(SwuError::Format(
            "the first member must be sw-description (at most 1 MiB)".into(),
        ));
    }
    let mut text = vec![0u8; first.size as usize];
    r.read_exact(&mut text)?;
    skip(r, (4 - first.size % 4) % 4)?;
    let text = String::from_utf8(text)
        .map_err(|_| SwuError::Format("sw-description is not UTF-8".into()))?;
    loop {
        let m = read_header(r)?;
        if m.name == TRAILER {
            return Err(SwuError::NoBundle);
        }
        if m.name.ends_with(".cairn") {
            return Ok((text, m.name, m.size));
        }
        skip(r, m.size + (4 - m.size % 4) % 4)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(bundle: &[u8]) -> Description {
        let (sha256, _) = sha256_of(&mut &bundle[..]).unwrap();
        Description {
            version: "2.0".into(),
            hardware: vec!["demo-x86".into(), "qemu \"x\"".into()],
            filename: "demo-2.cairn".into(),
            sha256,
        }
    }

    #[test]
    fn a_bundle_goes_in_and_comes_back_out_byte_for_byte() {
        // Odd sizes exercise the 4-byte padding.
        for len in [0usize, 1, 3, 4, 5, 70_001] {
            let bundle: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut swu = Vec::new();
            write(&mut swu, &desc(&bundle), &mut &bundle[..], len as u64).unwrap();
            assert_eq!(&swu[..6], NEWC);
            assert_eq!(swu.len() % 4, 0);
            let mut r = &swu[..];
            let (text, name, size) = open_bundle(&mut r).unwrap();
            assert_eq!((name.as_str(), size), ("demo-2.cairn", len as u64));
            assert!(text.contains("version = \"2.0\";"), "{text}");
            assert!(
                text.contains("\"qemu \\\"x\\\"\""),
                "quotes escaped: {text}"
            );
            let mut back = Vec::new();
            r.take(size).read_to_end(&mut back).unwrap();
            assert_eq!(back, bundle);
        }
    }

    #[test]
    fn the_real_cpio_tool_lists_and_extracts_what_we_write() {
        let Some(cpio) = ["/usr/bin/cpio", "/bin/cpio"]
            .iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            panic!("cpio is needed for this test: `cargo xtask host-deps` installs it");
        };
        let bundle = b"not really a bundle, but bytes".to_vec();
        let mut swu = Vec::new();
        write(
            &mut swu,
            &desc(&bundle),
            &mut &bundle[..],
            bundle.len() as u64,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("cairn-swu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use cairn_zfs::cmd::{Cmd, Runner};
        let extract = Cmd::new(cpio)
            .args(["-i", "--quiet", "--no-absolute-filenames", "-D"])
            .arg(&dir);
        let fin = Runner::new()
            .run_from_reader(&extract, &mut &swu[..])
            .unwrap();
        assert!(fin.success(), "{}", fin.stderr);
        assert_eq!(std::fs::read(dir.join("demo-2.cairn")).unwrap(), bundle);
        let text = std::fs::read_to_string(dir.join("sw-description")).unwrap();
        assert!(text.starts_with("software ="), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_and_archives_without_a_bundle_are_refused_by_name() {
        let e = open_bundle(&mut &b"<html>502 Bad Gateway</html>........................................................................................................"[..]).unwrap_err();
        assert!(matches!(e, SwuError::Format(_)), "{e}");
        let mut only_desc = Vec::new();
        let text = "software = { version = \"1\"; };\n";
        header(
            &mut only_desc,
            1,
            "sw-description",
            0o100644,
            text.len() as u64,
        )
        .unwrap();
        only_desc.extend_from_slice(text.as_bytes());
        pad(&mut only_desc, text.len() as u64).unwrap();
        header(&mut only_desc, 0, TRAILER, 0, 0).unwrap();
        assert!(matches!(
            open_bundle(&mut &only_desc[..]),
            Err(SwuError::NoBundle)
        ));
        let truncated = &only_desc[..50];
        assert!(open_bundle(&mut &truncated[..]).is_err());
        let bad_name = Description {
            filename: "../etc/passwd".into(),
            ..desc(b"")
        };
        assert!(matches!(
            write(&mut Vec::new(), &bad_name, &mut &b""[..], 0),
            Err(SwuError::Format(_))
        ));
    }
}

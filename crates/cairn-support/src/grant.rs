//! Time-limited pull grants: an `authorized_keys` entry that lets vendor support run the
//! export, and nothing else, until it expires. OpenSSH enforces `restrict`, `command=`
//! and `expiry-time=`; the export entry point checks the grant again itself.

use std::path::Path;

use crate::{Result, SupportError};

/// The comment that marks cairn's grant lines and carries the expiry in epoch seconds.
const MARK: &str = "cairn-grant-expires=";

fn stamp(epoch: u64) -> String {
    // YYYYMMDDHHMM in UTC, as sshd's expiry-time= wants.
    let c = cairn_engine::clock::civil(epoch);
    format!(
        "{:04}{:02}{:02}{:02}{:02}",
        c.year, c.month, c.day, c.hour, c.minute
    )
}

fn key_body(key: &str) -> Option<&str> {
    // "ssh-ed25519 AAAA... comment" -> "ssh-ed25519 AAAA..."
    let mut w = key.split_whitespace();
    let (t, k) = (w.next()?, w.next()?);
    (t.starts_with("ssh-") || t.starts_with("ecdsa-")).then_some(&key[..key.find(k)? + k.len()])
}

/// Adds (or replaces) a grant for `key` until `expires` (epoch seconds).
pub fn add(file: &Path, key: &str, expires: u64, command: &str) -> Result<()> {
    let body = key_body(key)
        .ok_or_else(|| SupportError::BadManifest(format!("not an SSH public key: {key}")))?;
    let mut lines: Vec<String> = read(file)?
        .into_iter()
        .filter(|l| !l.contains(body))
        .collect();
    lines.push(format!(
        "restrict,command=\"{command}\",expiry-time=\"{}\" {body} {MARK}{expires}",
        stamp(expires)
    ));
    write(file, &lines)
}

/// Removes the grant for `key`, if any; returns whether there was one.
pub fn revoke(file: &Path, key: &str) -> Result<bool> {
    let body = key_body(key)
        .ok_or_else(|| SupportError::BadManifest(format!("not an SSH public key: {key}")))?;
    let lines = read(file)?;
    let kept: Vec<String> = lines
        .iter()
        .filter(|l| !l.contains(body))
        .cloned()
        .collect();
    let had = kept.len() != lines.len();
    write(file, &kept)?;
    Ok(had)
}

/// Refuses unless `key` has a grant that has not expired at `now`.
pub fn check(file: &Path, key: &str, now: u64) -> Result<()> {
    let body =
        key_body(key).ok_or_else(|| SupportError::GrantExpired("never (not an SSH key)".into()))?;
    for l in read(file)? {
        if l.contains(body)
            && let Some(exp) = l
                .split(MARK)
                .nth(1)
                .and_then(|e| e.trim().parse::<u64>().ok())
        {
            return if now < exp {
                Ok(())
            } else {
                Err(SupportError::GrantExpired(stamp(exp)))
            };
        }
    }
    Err(SupportError::GrantExpired("never (no grant)".into()))
}

fn read(file: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(t.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SupportError::Io {
            what: format!("reading {}", file.display()),
            source,
        }),
    }
}

fn write(file: &Path, lines: &[String]) -> Result<()> {
    let tmp = file.with_extension("new");
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, file))
        .map_err(|source| SupportError::Io {
            what: format!("writing {}", file.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeLBLWDK6ZcZ0vZyZ2Jr0hC7P3xF8y2W0Zb6cE4sKqE vendor@support";

    #[test]
    fn grants_expire_and_are_revoked() {
        let dir = std::env::temp_dir().join(format!("cairn-grant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("authorized_keys");
        add(
            &f,
            KEY,
            1_800_000_000,
            "/usr/bin/cairnctl support export --grant",
        )
        .unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("restrict,command=\"/usr/bin/cairnctl support export --grant\",expiry-time=\"202701150800\""), "{text}");
        check(&f, KEY, 1_799_999_999).unwrap();
        assert!(
            matches!(
                check(&f, KEY, 1_800_000_000),
                Err(SupportError::GrantExpired(_))
            ),
            "expired grant refused"
        );
        assert!(revoke(&f, KEY).unwrap());
        assert!(
            matches!(check(&f, KEY, 0), Err(SupportError::GrantExpired(_))),
            "revoked grant refused"
        );
        assert!(!revoke(&f, KEY).unwrap());
        assert!(add(&f, "not a key", 1, "x").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

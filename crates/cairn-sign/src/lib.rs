//! minisign signing and key parsing shared by bundles (vendor side) and support archives
//! (appliance side). Signatures are plain minisign: they verify with `minisign -V`.

/// Parses a minisign public key (the `.pub` file's text or its base64 line).
pub fn public_key(text: &str) -> Result<minisign_verify::PublicKey, String> {
    let t = text.trim();
    minisign_verify::PublicKey::decode(t)
        .or_else(|_| minisign_verify::PublicKey::from_base64(t))
        .map_err(|e| format!("not a minisign public key: {e}"))
}

/// Signs bytes with a minisign secret key (`minisign -G` format; `password`
/// for encrypted keys); returns the signature file's text.
pub fn sign(data: &[u8], secret_key: &str, password: Option<String>) -> Result<String, String> {
    let bad = |e: &dyn std::fmt::Display| e.to_string();
    let sk = match password {
        Some(p) => minisign::SecretKeyBox::from_string(secret_key)
            .and_then(|b| b.into_secret_key(Some(p)))
            .map_err(|e| bad(&e))?,
        None => {
            // Unencrypted keys (`minisign -G -W`) are read as bytes: minisign 0.11 leaves
            // their checksum empty, which the crate's box reader refuses.
            let line = secret_key
                .lines()
                .find(|l| !l.starts_with("untrusted comment:") && !l.trim().is_empty())
                .ok_or_else(|| bad(&"no key line in the secret key file"))?;
            let bytes =
                base64_decode(line.trim()).ok_or_else(|| bad(&"the secret key is not base64"))?;
            if bytes.get(2..4) != Some(&[0, 0][..]) {
                return Err(bad(&"the secret key is encrypted; give its password"));
            }
            minisign::SecretKey::from_bytes(&bytes).map_err(|e| bad(&e))?
        }
    };
    let sig = minisign::sign(
        None,
        &sk,
        std::io::Cursor::new(data),
        Some("signed by cairn"),
        None,
    )
    .map_err(|e| bad(&e))?;
    Ok(sig.into_string())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert!(super::base64_decode("a$==").is_none());
    }

    #[test]
    fn signs_what_minisign_verify_accepts() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let sk = kp.sk.to_box(None).unwrap().to_string();
        let sig = super::sign(b"data", &sk, None).unwrap();
        let pk = super::public_key(&kp.pk.to_base64()).unwrap();
        let s = minisign_verify::Signature::decode(&sig).unwrap();
        pk.verify(b"data", &s, false).unwrap();
        assert!(pk.verify(b"other", &s, false).is_err());
    }
}

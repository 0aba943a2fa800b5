//! The shared HMAC-SHA256 secret: generating it, keeping it on disk, issuing and verifying
//! tokens with it.
//!
//! Whoever holds the key can mint any token, so it only ever lives in a file its owner alone can
//! read (mode 0600) and never appears in `Debug` output or error messages. Verification checks
//! the MAC, in constant time, over the token text before it decodes a byte of the payload.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Claims, Error, MAX_TOKEN_BYTES, TOKEN_PREFIX};

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a generated key: the HMAC-SHA256 block-size recommendation's lower bound.
const GENERATED_KEY_BYTES: usize = 32;
/// Shorter keys are refused: they would make tokens guessable.
const MIN_KEY_BYTES: usize = 32;
/// Longer keys buy nothing (HMAC hashes them down) and bound what a key file may make us read.
const MAX_KEY_BYTES: usize = 512;
/// Key files larger than this are not key files.
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// Encoded length of a 32-byte MAC in unpadded base64.
const MAC_TEXT_LEN: usize = 43;

/// The secret that signs and verifies tokens.
#[derive(Clone)]
pub struct SigningKey {
    bytes: Vec<u8>,
    /// Keyed once; cloning the keyed state per token skips re-hashing the key.
    mac: HmacSha256,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A new random key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`] when the OS has no random source.
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = [0u8; GENERATED_KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// A key from raw bytes (32 to 512 of them).
    ///
    /// # Errors
    /// [`Error::KeyFormat`] when the length is out of range.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            return Err(Error::KeyFormat {
                path: None,
                reason: format!(
                    "a key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {}; \
                     generate one with SigningKey::generate (or `openssl rand -hex 32`)",
                    bytes.len()
                ),
            });
        }
        let mac = HmacSha256::new_from_slice(bytes).map_err(|e| Error::KeyFormat {
            path: None,
            reason: e.to_string(),
        })?;
        Ok(Self {
            bytes: bytes.to_vec(),
            mac,
        })
    }

    /// A key from text: hex, or base64 (standard or URL-safe, padded or not). Surrounding
    /// whitespace is ignored, so a file written by `echo` or an editor loads.
    ///
    /// # Errors
    /// [`Error::KeyFormat`] when the text is neither encoding or the key is too short/long.
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.len() > MAX_KEY_BYTES * 2 {
            return Err(Error::KeyFormat {
                path: None,
                reason: format!(
                    "key text is {} characters; a key is at most {MAX_KEY_BYTES} bytes",
                    text.len()
                ),
            });
        }
        let bytes = decode_key_text(text).ok_or_else(|| Error::KeyFormat {
            path: None,
            reason: "the key must be hex or base64 text".to_owned(),
        })?;
        Self::from_bytes(&bytes)
    }

    /// The key as lowercase hex, the form [`save`](Self::save) writes.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// Reads a key file written by [`save`](Self::save) (or any hex/base64 key text).
    ///
    /// # Errors
    /// [`Error::KeyIo`] when the file cannot be read; [`Error::KeyFormat`] when it holds no key.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let io = |source| Error::KeyIo {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_KEY_FILE_BYTES {
            return Err(Error::KeyFormat {
                path: Some(path.to_owned()),
                reason: format!(
                    "the file is {len} bytes; a key file is at most {MAX_KEY_FILE_BYTES}"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_text(&text).map_err(|e| match e {
            Error::KeyFormat { reason, .. } => Error::KeyFormat {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })
    }

    /// Writes the key as hex to `path` (creating parent directories), readable only by its
    /// owner. The write goes to a temporary file renamed into place, so a reader never sees a
    /// half-written key.
    ///
    /// # Errors
    /// [`Error::KeyIo`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        write_private(path, format!("{}\n", self.to_hex()).as_bytes()).map_err(|source| {
            Error::KeyIo {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Loads the key at `path`, or generates and saves one when the file does not exist (what
    /// `hydrant up` does on first start).
    ///
    /// # Errors
    /// As [`load`](Self::load), [`generate`](Self::generate) and [`save`](Self::save).
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        match Self::load(path) {
            Err(Error::KeyIo { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.save(path)?;
                Ok(key)
            }
            other => other,
        }
    }

    /// Signs `claims` into token text.
    #[must_use]
    pub fn issue(&self, claims: &Claims) -> String {
        // Claims are strings and integers; serializing them cannot fail, and an empty payload
        // would only yield a token that never verifies.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + json.len() * 4 / 3 + 50);
        token.push_str(TOKEN_PREFIX);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let mac = self.mac.clone().chain_update(token.as_bytes()).finalize();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.into_bytes(), &mut token);
        token
    }

    /// Checks a token against this key and the current time.
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::BadSignature`] or [`Error::Expired`].
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        self.verify_at(token, crate::now_secs())
    }

    /// Checks a token as of `now` (UNIX seconds).
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::BadSignature`] or [`Error::Expired`].
    pub fn verify_at(&self, token: &str, now: i64) -> Result<Claims, Error> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Malformed("longer than 8 KiB"));
        }
        let (signed, mac_text) = token
            .rsplit_once('.')
            .ok_or(Error::Malformed("expected hyd1.<claims>.<signature>"))?;
        let (prefix, payload) = signed
            .split_once('.')
            .ok_or(Error::Malformed("expected hyd1.<claims>.<signature>"))?;
        if prefix != TOKEN_PREFIX {
            return Err(Error::Malformed("not a Hydrant token (no hyd1. prefix)"));
        }
        if payload.contains('.') {
            return Err(Error::Malformed("expected hyd1.<claims>.<signature>"));
        }
        if mac_text.len() != MAC_TEXT_LEN {
            return Err(Error::Malformed("signature has the wrong length"));
        }
        let mut mac = [0u8; 33];
        let n = URL_SAFE_NO_PAD
            .decode_slice(mac_text, &mut mac)
            .map_err(|_| Error::Malformed("signature is not base64url"))?;
        let mac = mac.get(..n).unwrap_or_default();
        self.mac
            .clone()
            .chain_update(signed.as_bytes())
            .verify_slice(mac)
            .map_err(|_| Error::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Error::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| Error::Malformed("claims are not valid JSON claims"))?;
        if claims.is_expired_at(now) {
            return Err(Error::Expired { exp: claims.exp });
        }
        Ok(claims)
    }
}

fn decode_key_text(text: &str) -> Option<Vec<u8>> {
    if !text.is_empty()
        && let Ok(bytes) = hex::decode(text)
    {
        return Some(bytes);
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    // A stale temporary file could carry looser permissions; start from nothing.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SCOPE_FIREHOSE, Scope};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key();
        let claims = Claims::new("alice")
            .with_scope(SCOPE_FIREHOSE)
            .with_scope(Scope::app_read("web"))
            .expires_in(3600);
        let token = k.issue(&claims);
        assert!(token.starts_with("hyd1."));
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(k.verify(&token).unwrap(), claims);
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        let token = key().issue(&Claims::new("a"));
        let other = SigningKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(matches!(other.verify(&token), Err(Error::BadSignature)));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = key();
        let mut c = Claims::new("a");
        c.exp = 1000;
        let t = k.issue(&c);
        assert!(k.verify_at(&t, 999).is_ok());
        assert!(matches!(
            k.verify_at(&t, 1000),
            Err(Error::Expired { exp: 1000 })
        ));
        c.exp = 0;
        assert!(k.verify_at(&k.issue(&c), i64::MAX).is_ok());
    }

    #[test]
    fn malformed_shapes() {
        let k = key();
        let good = k.issue(&Claims::new("a"));
        let (_, rest) = good.split_once('.').unwrap();
        for bad in [
            String::new(),
            "hyd1".to_owned(),
            "hyd1..".to_owned(),
            format!("hyd2.{rest}"),
            format!("{good}.x"),
            format!("hyd1.a.{rest}"),
            "x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(
                matches!(k.verify(&bad), Err(Error::Malformed(_))),
                "{bad:.40} should be malformed"
            );
        }
    }

    #[test]
    fn signed_garbage_is_malformed_not_accepted() {
        // A payload the key really signed but that is not claims JSON.
        let k = key();
        let signed = format!("hyd1.{}", URL_SAFE_NO_PAD.encode(b"[1,2,3]"));
        let mac = k.mac.clone().chain_update(signed.as_bytes()).finalize();
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.into_bytes()));
        assert!(matches!(k.verify(&token), Err(Error::Malformed(_))));
    }

    #[test]
    fn key_text_forms() {
        let k = key();
        let hex = k.to_hex();
        assert_eq!(hex.len(), 64);
        let from_hex = SigningKey::from_text(&format!("  {hex}\n")).unwrap();
        let from_b64 = SigningKey::from_text(&STANDARD.encode([7u8; 32])).unwrap();
        let from_b64url = SigningKey::from_text(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap();
        let token = k.issue(&Claims::new("a"));
        for k2 in [from_hex, from_b64, from_b64url] {
            assert!(k2.verify(&token).is_ok());
        }
        assert!(SigningKey::from_text("abcd").is_err(), "too short");
        assert!(SigningKey::from_text("not a key!").is_err());
        assert!(SigningKey::from_text(&"ab".repeat(2000)).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", key()), "SigningKey(<redacted>)");
    }

    #[test]
    fn generated_keys_differ() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        assert_ne!(a.to_hex(), b.to_hex());
    }
}

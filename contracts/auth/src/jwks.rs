//! The public halves: JSON Web Keys as `/token_keys` serves them (UAA's shape), and the
//! [`KeySet`] every verifying role holds.
//!
//! A key set verifies; it can never sign. Verifying roles fetch it from the cloud controller,
//! keep it in memory and in a cache file, so they verify while the controller is down.
//!
//! The invariant: [`KeySet::verify`] answers every input, however hostile, with `Ok` only for a
//! token signed by one of its keys, meant for the audience the caller names and not expired;
//! it never panics, runs its structure checks before any crypto, and never allocates more than
//! [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES) worth of memory for a token.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::key::{MAX_KEYS, write_private};
use crate::{Claims, Error, jwt};

/// A key-set document larger than this is not one (a key is about 150 bytes).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// `{"keys": [...]}`: what `GET /token_keys` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// One public key (RFC 7517 / RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP` for Ed25519.
    pub kty: String,
    /// Curve: `Ed25519`.
    #[serde(default)]
    pub crv: String,
    /// Key id, as tokens name it in their header.
    #[serde(default)]
    pub kid: String,
    /// The public key, base64url.
    #[serde(default)]
    pub x: String,
    /// `sig`.
    #[serde(rename = "use", default)]
    pub use_: String,
    /// `EdDSA`.
    #[serde(default)]
    pub alg: String,
}

impl Jwk {
    /// The JWK of an Ed25519 public key.
    #[must_use]
    pub fn ed25519(kid: &str, public: &[u8]) -> Self {
        Self {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            kid: kid.to_owned(),
            x: URL_SAFE_NO_PAD.encode(public),
            use_: "sig".to_owned(),
            alg: jwt::ALG.to_owned(),
        }
    }
}

/// Public keys by kid: what a verifier holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<(String, [u8; 32])>,
}

impl KeySet {
    /// The set of `keys` that are Ed25519 signing keys; other kinds are skipped (a newer
    /// issuer may publish them), malformed Ed25519 keys are an error.
    ///
    /// # Errors
    /// [`Error::KeyFormat`] for a bad kid or key, or more than [`MAX_KEYS`] keys.
    pub fn from_keys(keys: impl IntoIterator<Item = Jwk>) -> Result<Self, Error> {
        let mut set = Vec::new();
        for jwk in keys {
            if jwk.kty != "OKP"
                || jwk.crv != "Ed25519"
                || (!jwk.use_.is_empty() && jwk.use_ != "sig")
            {
                continue;
            }
            let bad = |reason: String| Error::KeyFormat { path: None, reason };
            if !jwt::is_kid(&jwk.kid) {
                return Err(bad(
                    "a key's kid is missing or not short base64url text".to_owned()
                ));
            }
            let mut x = [0u8; 34];
            let n = URL_SAFE_NO_PAD
                .decode_slice(jwk.x.as_bytes(), &mut x)
                .map_err(|_| bad(format!("key {}: x is not base64url", jwk.kid)))?;
            let mut public = [0u8; 32];
            match x.get(..n) {
                Some(bytes) if n == 32 => public.copy_from_slice(bytes),
                _ => return Err(bad(format!("key {}: x is not 32 bytes", jwk.kid))),
            }
            if set.len() >= MAX_KEYS {
                return Err(bad(format!("more than {MAX_KEYS} keys")));
            }
            if !set.iter().any(|(kid, _)| *kid == jwk.kid) {
                set.push((jwk.kid, public));
            }
        }
        Ok(Self { keys: set })
    }

    /// Parses a `/token_keys` document.
    ///
    /// # Errors
    /// [`Error::KeyFormat`] when it is too large, not JSON, or holds bad keys.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(Error::KeyFormat {
                path: None,
                reason: format!(
                    "the key set is {} bytes; at most {MAX_JWKS_BYTES}",
                    bytes.len()
                ),
            });
        }
        let jwks: Jwks = serde_json::from_slice(bytes).map_err(|e| Error::KeyFormat {
            path: None,
            reason: format!("not a {{\"keys\": [...]}} document: {e}"),
        })?;
        Self::from_keys(jwks.keys)
    }

    /// The set as a `/token_keys` document.
    #[must_use]
    pub fn to_jwks(&self) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .map(|(kid, public)| Jwk::ed25519(kid, public))
                .collect(),
        }
    }

    /// The set as `/token_keys` JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Strings only: serializing cannot fail.
        serde_json::to_string(&self.to_jwks()).unwrap_or_default()
    }

    /// Reads a cached or configured key-set file.
    ///
    /// # Errors
    /// [`Error::KeyIo`] or [`Error::KeyFormat`], naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let io = |source| Error::KeyIo {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_JWKS_BYTES as u64 {
            return Err(Error::KeyFormat {
                path: Some(path.to_owned()),
                reason: format!("the file is {len} bytes; a key set is at most {MAX_JWKS_BYTES}"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_json(&bytes).map_err(|e| match e {
            Error::KeyFormat { reason, .. } => Error::KeyFormat {
                path: Some(path.to_owned()),
                reason,
            },
            other => other,
        })
    }

    /// Writes the set to `path` (atomically), as a cache a restarted verifier reads.
    ///
    /// # Errors
    /// [`Error::KeyIo`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let json = serde_json::to_vec_pretty(&self.to_jwks()).unwrap_or_default();
        write_private(path, &json).map_err(|source| Error::KeyIo {
            path: path.to_owned(),
            source,
        })
    }

    /// How many keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are none (nothing verifies).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when the set holds `kid`.
    #[must_use]
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == kid)
    }

    /// Checks a token for `audience` against these keys and the current time.
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::UnknownKey`], [`Error::BadSignature`],
    /// [`Error::Expired`] or [`Error::WrongAudience`].
    pub fn verify(&self, token: &str, audience: &'static str) -> Result<Claims, Error> {
        self.verify_at(token, audience, crate::now_secs())
    }

    /// Checks a token for `audience` as of `now` (UNIX seconds). Order: structure, key,
    /// signature, then (only for signed bytes) claims, expiry and audience.
    ///
    /// # Errors
    /// As [`verify`](Self::verify).
    pub fn verify_at(
        &self,
        token: &str,
        audience: &'static str,
        now: i64,
    ) -> Result<Claims, Error> {
        let parts = jwt::split(token)?;
        let public = self
            .keys
            .iter()
            .find(|(kid, _)| *kid == parts.kid)
            .map(|(_, public)| public)
            .ok_or(Error::UnknownKey { kid: parts.kid })?;
        UnparsedPublicKey::new(&ED25519, public)
            .verify(parts.signed.as_bytes(), &parts.signature)
            .map_err(|_| Error::BadSignature)?;
        let claims = jwt::claims(parts.payload)?;
        if claims.is_expired_at(now) {
            return Err(Error::Expired { exp: claims.exp });
        }
        if !claims.has_audience(audience) {
            return Err(Error::WrongAudience { expected: audience });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AUD_LOGS, SigningKey};

    #[test]
    fn jwks_has_uaa_shape_and_round_trips() {
        let k = SigningKey::generate().unwrap();
        let doc = serde_json::to_value(k.key_set().to_jwks()).unwrap();
        let key = &doc["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], k.kid());
        assert_eq!(key["x"].as_str().unwrap().len(), 43);
        let back = KeySet::from_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(back, k.key_set());
    }

    #[test]
    fn other_key_kinds_are_skipped_and_bad_ones_refused() {
        let rsa = r#"{"keys":[{"kty":"RSA","kid":"legacy","n":"abc","e":"AQAB"}]}"#;
        assert!(KeySet::from_json(rsa.as_bytes()).unwrap().is_empty());
        let short = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"AAAA"}]}"#;
        assert!(KeySet::from_json(short.as_bytes()).is_err());
        let bad_kid = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a b","x":"AAAA"}]}"#;
        assert!(KeySet::from_json(bad_kid.as_bytes()).is_err());
        assert!(KeySet::from_json(b"[]").is_err());
        assert!(KeySet::from_json(&vec![b' '; MAX_JWKS_BYTES + 1]).is_err());
    }

    #[test]
    fn a_token_without_expiry_is_refused() {
        let k = SigningKey::generate().unwrap();
        let mut c = Claims::new("a").for_audience(AUD_LOGS);
        c.exp = 0;
        assert!(matches!(
            k.key_set().verify(&k.issue(&c), AUD_LOGS),
            Err(Error::Expired { exp: 0 })
        ));
        c.exp = 1000;
        let t = k.issue(&c);
        assert!(k.key_set().verify_at(&t, AUD_LOGS, 999).is_ok());
        assert!(matches!(
            k.key_set().verify_at(&t, AUD_LOGS, 1000),
            Err(Error::Expired { exp: 1000 })
        ));
    }

    #[test]
    fn other_algorithms_and_shapes_are_malformed() {
        let k = SigningKey::generate().unwrap();
        let good = k.issue(&Claims::new("a").for_audience(AUD_LOGS));
        let (_, rest) = good.split_once('.').unwrap();
        let none = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, k.kid()));
        let hs = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, k.kid()));
        let set = k.key_set();
        for bad in [
            String::new(),
            "a.b".to_owned(),
            "..".to_owned(),
            format!("{none}.{rest}"),
            format!("{hs}.{rest}"),
            format!("{good}.x"),
            format!("hyd1.{rest}"),
            "x".repeat(crate::MAX_TOKEN_BYTES + 1),
            good.replace('.', "+"),
        ] {
            assert!(
                matches!(set.verify(&bad, AUD_LOGS), Err(Error::Malformed(_))),
                "{bad:.60} should be malformed"
            );
        }
    }

    #[test]
    fn the_cache_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/token_keys.json");
        let k = SigningKey::generate().unwrap();
        k.key_set().save(&path).unwrap();
        assert_eq!(KeySet::load(&path).unwrap(), k.key_set());
    }
}

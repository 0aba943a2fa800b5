//! The private half: the Ed25519 key that signs tokens, kept on disk only by the cloud
//! controller, and the key directory that lets it rotate without downtime.
//!
//! Whoever holds a signing key can mint any token, so it only ever lives in a file its owner
//! alone can read (mode 0600), never appears in `Debug` output or error messages, and no other
//! role is given one: they get the public halves ([`crate::KeySet`], `/token_keys`).
//!
//! # Rotation (the key directory)
//! `<dir>/<kid>.key` holds each key (PKCS#8, base64); `<dir>/active` names the one that signs.
//! Every key in the directory is published. Rotating is three steps, each taking effect
//! without a restart of any verifier: [`KeyStore::stage`] a new key (published, not yet
//! signing, so verifiers learn it first), [`KeyStore::activate`] it (it signs from now on; the
//! old one is still published), and once the longest-lived token the old key signed has
//! expired, [`KeyStore::retire`] the old one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::jwks::{Jwk, KeySet};
use crate::{Claims, Error, jwt};

/// Key files larger than this are not key files.
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// Most keys a directory may hold: a rotation needs two, a staged third is the most.
pub const MAX_KEYS: usize = 8;
const ACTIVE_FILE: &str = "active";
const KEY_SUFFIX: &str = ".key";
/// Serialises first use of a directory (see [`KeyStore::open`]); not a key file.
const LOCK_FILE: &str = ".lock";

/// An Ed25519 private key that signs tokens, with its key id.
#[derive(Clone)]
pub struct SigningKey {
    pair: Arc<Ed25519KeyPair>,
    pkcs8: Arc<Vec<u8>>,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(kid {}, <redacted>)", self.kid)
    }
}

impl SigningKey {
    /// A new random key from the operating system's CSPRNG.
    ///
    /// # Errors
    /// [`Error::Random`] when the OS has no random source.
    pub fn generate() -> Result<Self, Error> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| Error::Random)?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key from PKCS#8 DER bytes (v1 as `openssl genpkey -algorithm ed25519` writes, or v2).
    ///
    /// # Errors
    /// [`Error::KeyFormat`] when the bytes are not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, Error> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| Error::KeyFormat {
                path: None,
                reason: format!(
                    "not an Ed25519 PKCS#8 private key ({e}); make one with \
                 `openssl genpkey -algorithm ed25519`"
                ),
            })?;
        let kid = kid_of(pair.public_key().as_ref());
        Ok(Self {
            pair: Arc::new(pair),
            pkcs8: Arc::new(der.to_vec()),
            kid,
        })
    }

    /// A key from text: base64 PKCS#8, or a PEM `PRIVATE KEY` block. Surrounding whitespace is
    /// ignored.
    ///
    /// # Errors
    /// [`Error::KeyFormat`] when the text holds no Ed25519 key.
    pub fn from_text(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_KEY_FILE_BYTES as usize {
            return Err(Error::KeyFormat {
                path: None,
                reason: format!("key text is {} bytes; a key is far shorter", text.len()),
            });
        }
        let body: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| Error::KeyFormat {
                path: None,
                reason: "the key must be base64 PKCS#8 or a PEM PRIVATE KEY block".to_owned(),
            })?;
        Self::from_pkcs8(&der)
    }

    /// The key id tokens it signs carry in their header: derived from the public key, so the
    /// same key always has the same id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JSON Web Key, for `/token_keys`.
    #[must_use]
    pub fn public_jwk(&self) -> Jwk {
        Jwk::ed25519(&self.kid, self.pair.public_key().as_ref())
    }

    /// A verifier that knows only this key's public half.
    #[must_use]
    pub fn key_set(&self) -> KeySet {
        KeySet::from_keys([self.public_jwk()]).unwrap_or_default()
    }

    /// Reads a key file written by [`save`](Self::save) (or any base64/PEM PKCS#8 text).
    ///
    /// # Errors
    /// [`Error::KeyIo`] when the file cannot be read; [`Error::KeyFormat`] when it holds no key.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = read_small(path)?;
        Self::from_text(&text).map_err(|e| with_path(e, path))
    }

    /// Writes the key (base64 PKCS#8) to `path`, readable only by its owner, through a
    /// temporary file renamed into place so a reader never sees half a key.
    ///
    /// # Errors
    /// [`Error::KeyIo`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let text = format!("{}\n", STANDARD.encode(self.pkcs8.as_slice()));
        write_private(path, text.as_bytes()).map_err(|source| Error::KeyIo {
            path: path.to_owned(),
            source,
        })
    }

    /// Loads the key at `path`, or generates and saves one when the file does not exist.
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

    /// Signs `claims` into a JWT (`EdDSA`, with this key's `kid`). A token without a `jti`
    /// gets a random one.
    #[must_use]
    pub fn issue(&self, claims: &Claims) -> String {
        let mut owned;
        let claims = if claims.jti.is_none() {
            owned = claims.clone();
            owned.jti = Some(random_id());
            &owned
        } else {
            claims
        };
        // Claims are strings and integers; serializing them cannot fail, and an empty payload
        // would only yield a token that never verifies.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let input = jwt::signing_input(&self.kid, &json);
        let signature = self.pair.sign(input.as_bytes());
        jwt::finish(input, signature.as_ref())
    }
}

/// A random, URL-safe id (16 bytes): token ids and client secrets.
#[must_use]
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // An OS without randomness has failed far worse elsewhere; a zero id is still unique
    // enough for logging and never used for trust.
    let _ = SystemRandom::new().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `kid`: the first 12 bytes of SHA-256 over the public key, base64url.
fn kid_of(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    URL_SAFE_NO_PAD.encode(digest.as_ref().get(..12).unwrap_or_default())
}

/// The cloud controller's key directory: every key it publishes and the one that signs.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
    active: SigningKey,
    keys: Vec<SigningKey>,
}

impl KeyStore {
    /// Opens `dir`, creating it with one active key on first use.
    ///
    /// # Errors
    /// [`Error::KeyIo`] / [`Error::KeyFormat`] for unreadable files, more than [`MAX_KEYS`]
    /// keys, or an `active` file naming a key that is not there.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let active_path = dir.join(ACTIVE_FILE);
        let mut keys = read_keys(dir)?;
        // First use: several controllers sharing the directory may start at once. Creation
        // happens under an exclusive lock and the directory is read again inside it, so one
        // creates the key and the others find it (rather than each signing with a key of its
        // own that only it publishes).
        let _first_use = if keys.is_empty() || !active_path.exists() {
            let lock = lock_dir(dir)?;
            keys = read_keys(dir)?;
            if keys.is_empty() {
                let key = SigningKey::generate()?;
                key.save(dir.join(format!("{}{KEY_SUFFIX}", key.kid())))?;
                write_active(dir, key.kid())?;
                keys.push(key);
            }
            Some(lock)
        } else {
            None
        };
        let active = match read_small(&active_path) {
            Ok(text) => text.trim().to_owned(),
            Err(Error::KeyIo { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && keys.len() == 1 =>
            {
                let only = keys.first().map(|k| k.kid().to_owned()).unwrap_or_default();
                write_active(dir, &only)?;
                only
            }
            Err(e) => return Err(e),
        };
        let active = keys
            .iter()
            .find(|k| k.kid() == active)
            .cloned()
            .ok_or_else(|| Error::KeyFormat {
                path: Some(active_path),
                reason: format!(
                    "names key {active:?}, which is not in the directory; write the kid of one \
                     of its *.key files"
                ),
            })?;
        Ok(Self {
            dir: dir.to_owned(),
            active,
            keys,
        })
    }

    /// The key that signs new tokens.
    #[must_use]
    pub fn signing(&self) -> &SigningKey {
        &self.active
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public half of every key in the directory (what `/token_keys` serves).
    #[must_use]
    pub fn key_set(&self) -> KeySet {
        KeySet::from_keys(self.keys.iter().map(SigningKey::public_jwk)).unwrap_or_default()
    }

    /// Rotation step 1: adds a new key, published but not yet signing. Returns its kid.
    ///
    /// # Errors
    /// As [`open`](Self::open), or the directory already holds [`MAX_KEYS`] keys.
    pub fn stage(dir: impl AsRef<Path>) -> Result<String, Error> {
        let dir = dir.as_ref();
        let store = Self::open(dir)?;
        if store.keys.len() >= MAX_KEYS {
            return Err(Error::KeyFormat {
                path: Some(dir.to_owned()),
                reason: format!("already holds {MAX_KEYS} keys; retire old ones first"),
            });
        }
        let key = SigningKey::generate()?;
        key.save(dir.join(format!("{}{KEY_SUFFIX}", key.kid())))?;
        Ok(key.kid().to_owned())
    }

    /// Rotation step 2: `kid` signs from now on; the previous key stays published.
    ///
    /// # Errors
    /// [`Error::KeyFormat`] when `kid` is not in the directory.
    pub fn activate(dir: impl AsRef<Path>, kid: &str) -> Result<(), Error> {
        let dir = dir.as_ref();
        let store = Self::open(dir)?;
        if !store.keys.iter().any(|k| k.kid() == kid) {
            return Err(Error::KeyFormat {
                path: Some(dir.to_owned()),
                reason: format!("has no key {kid:?}; stage one first"),
            });
        }
        write_active(dir, kid)
    }

    /// Rotation step 3: drops `kid` from the directory, so verifiers stop accepting it at
    /// their next fetch. Refuses the active key.
    ///
    /// # Errors
    /// [`Error::KeyFormat`] for the active key or a kid that is not a key id.
    pub fn retire(dir: impl AsRef<Path>, kid: &str) -> Result<(), Error> {
        let dir = dir.as_ref();
        let store = Self::open(dir)?;
        if store.active.kid() == kid || !jwt::is_kid(kid) {
            return Err(Error::KeyFormat {
                path: Some(dir.to_owned()),
                reason: format!(
                    "{kid:?} is the active key or not a key id; activate another first"
                ),
            });
        }
        let path = dir.join(format!("{kid}{KEY_SUFFIX}"));
        std::fs::remove_file(&path).map_err(|source| Error::KeyIo { path, source })
    }
}

fn read_keys(dir: &Path) -> Result<Vec<SigningKey>, Error> {
    let io = |source| Error::KeyIo {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_none_or(|e| e != "key") {
            continue;
        }
        if keys.len() >= MAX_KEYS {
            return Err(Error::KeyFormat {
                path: Some(dir.to_owned()),
                reason: format!("holds more than {MAX_KEYS} keys; retire old ones"),
            });
        }
        keys.push(SigningKey::load(&path)?);
    }
    keys.sort_by(|a, b| a.kid().cmp(b.kid()));
    Ok(keys)
}

/// Takes the directory's exclusive lock (`<dir>/.lock`, an advisory `flock`), held until the
/// returned file is dropped; waits for another holder.
fn lock_dir(dir: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(LOCK_FILE);
    let io = |source| Error::KeyIo {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

fn write_active(dir: &Path, kid: &str) -> Result<(), Error> {
    let path = dir.join(ACTIVE_FILE);
    write_private(&path, format!("{kid}\n").as_bytes())
        .map_err(|source| Error::KeyIo { path, source })
}

/// Reads a small text file (at most 4 KiB).
pub(crate) fn read_small(path: &Path) -> Result<String, Error> {
    let io = |source| Error::KeyIo {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(Error::KeyFormat {
            path: Some(path.to_owned()),
            reason: format!("the file is {len} bytes; a key file is at most {MAX_KEY_FILE_BYTES}"),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::KeyFormat { reason, .. } => Error::KeyFormat {
            path: Some(path.to_owned()),
            reason,
        },
        other => other,
    }
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and a rename.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
    use crate::{AUD_API, AUD_LOGS, SCOPE_FIREHOSE, Scope};

    fn key() -> SigningKey {
        SigningKey::generate().unwrap()
    }

    #[test]
    fn round_trip_through_the_published_keys() {
        let k = key();
        let claims = Claims::new("alice")
            .for_audience(AUD_LOGS)
            .with_scope(SCOPE_FIREHOSE)
            .with_scope(Scope::app_read("web"))
            .expires_in(3600);
        let token = k.issue(&claims);
        assert_eq!(token.split('.').count(), 3);
        let got = k.key_set().verify(&token, AUD_LOGS).unwrap();
        assert_eq!(got.sub, "alice");
        assert_eq!(got.scopes, claims.scopes);
        assert!(got.jti.is_some(), "issue fills in a token id");
        assert!(matches!(
            k.key_set().verify(&token, AUD_API),
            Err(Error::WrongAudience { expected: AUD_API })
        ));
    }

    #[test]
    fn another_key_is_unknown_and_a_forged_kid_is_a_bad_signature() {
        let a = key();
        let b = key();
        let token = b.issue(&Claims::new("m").for_audience(AUD_API));
        assert!(matches!(
            a.key_set().verify(&token, AUD_API),
            Err(Error::UnknownKey { .. })
        ));
        // b's token relabelled with a's kid: the signature does not match a's key.
        let (_, rest) = token.split_once('.').unwrap();
        let header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#,
            a.kid()
        ));
        let forged = format!("{header}.{rest}");
        assert!(matches!(
            a.key_set().verify(&forged, AUD_API),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn pem_and_base64_forms_load() {
        let k = key();
        let b64 = STANDARD.encode(k.pkcs8.as_slice());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        assert_eq!(SigningKey::from_text(&pem).unwrap().kid(), k.kid());
        assert_eq!(
            SigningKey::from_text(&format!(" {b64}\n")).unwrap().kid(),
            k.kid()
        );
        assert!(SigningKey::from_text("not a key!").is_err());
        assert!(SigningKey::from_text("AAAA").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let k = key();
        assert_eq!(
            format!("{k:?}"),
            format!("SigningKey(kid {}, <redacted>)", k.kid())
        );
    }

    #[test]
    fn controllers_opening_a_fresh_shared_directory_at_once_all_sign_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("token_keys");
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let openers: Vec<_> = (0..8)
            .map(|_| {
                let (keys, barrier) = (keys.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    KeyStore::open(&keys).unwrap()
                })
            })
            .collect();
        let stores: Vec<KeyStore> = openers.into_iter().map(|t| t.join().unwrap()).collect();
        let kid = stores[0].signing().kid().to_owned();
        for store in &stores {
            assert_eq!(
                store.signing().kid(),
                kid,
                "two openers signed with different keys"
            );
            // What any one publishes verifies what every other signs.
            assert_eq!(store.key_set().len(), 1);
            assert!(store.key_set().contains(&kid));
        }
        assert_eq!(KeyStore::open(&keys).unwrap().signing().kid(), kid);
        let key_files = std::fs::read_dir(&keys)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "key"))
            .count();
        assert_eq!(key_files, 1);
    }

    #[test]
    fn rotation_in_three_steps() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyStore::open(dir.path()).unwrap();
        let old = first.signing().clone();
        let old_token = old.issue(&Claims::new("a").for_audience(AUD_API));

        let new_kid = KeyStore::stage(dir.path()).unwrap();
        let staged = KeyStore::open(dir.path()).unwrap();
        assert_eq!(
            staged.signing().kid(),
            old.kid(),
            "a staged key does not sign yet"
        );
        assert_eq!(staged.key_set().len(), 2, "but it is published");

        KeyStore::activate(dir.path(), &new_kid).unwrap();
        let both = KeyStore::open(dir.path()).unwrap();
        assert_eq!(both.signing().kid(), new_kid);
        let new_token = both
            .signing()
            .issue(&Claims::new("b").for_audience(AUD_API));
        let published = both.key_set();
        assert!(published.verify(&old_token, AUD_API).is_ok());
        assert!(published.verify(&new_token, AUD_API).is_ok());

        assert!(
            KeyStore::retire(dir.path(), &new_kid).is_err(),
            "never the active key"
        );
        KeyStore::retire(dir.path(), old.kid()).unwrap();
        let after = KeyStore::open(dir.path()).unwrap().key_set();
        assert!(matches!(
            after.verify(&old_token, AUD_API),
            Err(Error::UnknownKey { .. })
        ));
        assert!(after.verify(&new_token, AUD_API).is_ok());
    }
}

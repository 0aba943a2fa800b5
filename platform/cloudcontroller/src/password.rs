//! Password hashing (PBKDF2-HMAC-SHA256 from RustCrypto's `pbkdf2`, with a random salt) and
//! random identifiers (`uuid` version 4).
//!
//! Stored hashes carry their own parameters (`pbkdf2-sha256$<iterations>$<salt>$<hash>`), so
//! raising the iteration count later leaves old hashes verifiable; hashes stored before the
//! hand-written PBKDF2 was replaced verify unchanged, since both compute RFC 8018's function
//! (the published vectors below pin it). Comparison is constant-time, so a wrong guess takes as
//! long as a nearly right one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::Sha256;

const SCHEME: &str = "pbkdf2-sha256";
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;
/// Stored iteration counts above this are refused, so a tampered row cannot stall a login.
const MAX_ITERATIONS: u32 = 10_000_000;

/// `len` random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // Only guids and salts come from here (tokens and keys use the auth crate), so losing
        // the OS source degrades to std's randomly keyed hasher rather than refusing service.
        for b in &mut bytes {
            *b = fallback_byte();
        }
    }
    bytes
}

fn fallback_byte() -> u8 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().to_le_bytes()[0]
}

/// A new random guid in the usual 8-4-4-4-12 form (version 4).
pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new random password for a generated admin: 24 URL-safe characters.
pub(crate) fn new_password() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<18>())
}

/// PBKDF2-HMAC-SHA256 (RFC 8018) of `password` with `salt`, one 32-byte block.
fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// A storable hash of `password`.
pub(crate) fn hash(password: &str, iterations: u32) -> String {
    let salt = random_bytes::<SALT_BYTES>();
    let digest = pbkdf2(password.as_bytes(), &salt, iterations);
    format!(
        "{SCHEME}${iterations}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(digest)
    )
}

/// True when `password` matches `stored`. A malformed stored hash never matches.
pub(crate) fn verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iterations), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(iterations) = iterations.parse::<u32>() else {
        return false;
    };
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return false;
    }
    let (Ok(salt), Ok(expected)) = (
        STANDARD_NO_PAD.decode(salt),
        STANDARD_NO_PAD.decode(expected),
    ) else {
        return false;
    };
    if salt.len() > 64 || expected.len() != HASH_BYTES {
        return false;
    }
    let actual = pbkdf2(password.as_bytes(), &salt, iterations);
    actual
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_pbkdf2_sha256_vectors() {
        assert_eq!(
            hydrant_api::push::hex(&pbkdf2(b"password", b"salt", 1)),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
        assert_eq!(
            hydrant_api::push::hex(&pbkdf2(b"password", b"salt", 2)),
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
        );
    }

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash("correct horse", 1000);
        let b = hash("correct horse", 1000);
        assert_ne!(a, b);
        assert!(verify("correct horse", &a));
        assert!(!verify("correct hors", &a));
        for bad in [
            "",
            "x$1$a$b",
            "pbkdf2-sha256$0$AA$AA",
            "pbkdf2-sha256$99999999999$AA$AA",
        ] {
            assert!(!verify("x", bad), "{bad}");
        }
    }

    /// A row in the stored format with a digest made outside this crate (Python's
    /// `hashlib.pbkdf2_hmac`, the function the hand-written code this module used before also
    /// computed): users stored before the switch to RustCrypto's `pbkdf2` still log in.
    #[test]
    fn hashes_stored_before_the_switch_still_verify() {
        let stored = "pbkdf2-sha256$1000$AAECAwQFBgcICQoLDA0ODw$\
                      yRTMTwbMbo9G0VfjobWqerzuuxe7BETNTErBbKKumGQ";
        assert!(verify("correct horse", stored));
        assert!(!verify("correct horse!", stored));
    }

    #[test]
    fn guids_look_like_uuids() {
        let g = new_guid();
        assert_eq!(g.len(), 36);
        assert_eq!(g.as_bytes()[14], b'4');
        assert_ne!(g, new_guid());
    }
}

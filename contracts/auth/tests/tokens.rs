//! Token properties a verifier relies on, over real key files: a saved key verifies what the
//! original issued, the file is private, tampering with any byte fails, and no input panics.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] fns")]

use hydrant_auth::{Claims, Error, SCOPE_FIREHOSE, Scope, SigningKey};
use proptest::prelude::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32]).unwrap()
}

#[test]
fn saved_key_is_private_and_verifies_what_the_original_issued() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/signing.key");
    let original = SigningKey::generate().unwrap();
    original.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key file must be owner-only");
    let loaded = SigningKey::load(&path).unwrap();
    let token = original.issue(&Claims::new("cc").with_scope(SCOPE_FIREHOSE));
    assert_eq!(loaded.verify(&token).unwrap().sub, "cc");
    // Saving again over an existing file keeps it private.
    loaded.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn load_or_generate_creates_once_then_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.key");
    let first = SigningKey::load_or_generate(&path).unwrap();
    let second = SigningKey::load_or_generate(&path).unwrap();
    assert_eq!(first.to_hex(), second.to_hex());
}

#[test]
fn bad_key_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.key");
    std::fs::write(&path, "hello").unwrap();
    let err = SigningKey::load(&path).unwrap_err();
    assert!(matches!(err, Error::KeyFormat { .. }));
    assert!(err.to_string().contains("bad.key"), "{err}");
    let missing = SigningKey::load(dir.path().join("missing.key")).unwrap_err();
    assert!(matches!(missing, Error::KeyIo { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tampering_with_any_byte_fails(
        sub in "[a-z]{1,20}",
        app in "[a-z0-9-]{1,30}",
        pos in any::<prop::sample::Index>(),
        // Printable ASCII: anything an HTTP header could carry.
        replacement in 0x21u8..0x7f,
    ) {
        let k = key();
        let token = k.issue(&Claims::new(sub).with_scope(Scope::app_read(&app)).expires_in(600));
        let mut bytes = token.into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(k.verify(&tampered).is_err(), "accepted {}", tampered);
    }

    #[test]
    fn truncating_or_extending_fails(cut in 0usize..400, extra in "[A-Za-z0-9_.-]{1,8}") {
        let k = key();
        let token = k.issue(&Claims::new("x").with_scope("admin"));
        let cut = cut.min(token.len() - 1);
        prop_assert!(k.verify(&token[..cut]).is_err());
        let extended = format!("{token}{extra}");
        prop_assert!(k.verify(&extended).is_err());
    }

    #[test]
    fn random_strings_never_panic_or_verify(s in ".{0,600}") {
        prop_assert!(key().verify(&s).is_err());
    }

    #[test]
    fn random_token_shaped_strings_never_verify(
        a in "[A-Za-z0-9_-]{0,200}",
        b in "[A-Za-z0-9_-]{0,60}",
    ) {
        let s = format!("hyd1.{a}.{b}");
        prop_assert!(key().verify(&s).is_err());
    }

    #[test]
    fn random_key_text_never_panics(s in ".{0,200}") {
        let _ = SigningKey::from_text(&s);
    }
}

//! Token properties a verifier relies on, over real key files: a saved key verifies what the
//! original issued, the file is private, tampering with any byte fails, no input panics, and
//! the public key set alone verifies but cannot sign.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] fns")]

use std::sync::OnceLock;

use hydrant_auth::{AUD_API, AUD_LOGS, Claims, Error, KeySet, SCOPE_FIREHOSE, Scope, SigningKey};
use proptest::prelude::*;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().unwrap())
}

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| key().key_set())
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
    assert_eq!(loaded.kid(), original.kid());
    let token = original.issue(
        &Claims::new("cc")
            .for_audience(AUD_LOGS)
            .with_scope(SCOPE_FIREHOSE),
    );
    assert_eq!(loaded.key_set().verify(&token, AUD_LOGS).unwrap().sub, "cc");
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
    assert_eq!(first.kid(), second.kid());
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

#[test]
fn the_published_set_holds_no_private_material() {
    // What `/token_keys` serves is the 32-byte public key: nothing that could sign.
    let doc = serde_json::to_string(&keys().to_jwks()).unwrap();
    assert!(!doc.contains("\"d\""), "{doc}");
    assert_eq!(keys().len(), 1);
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
        let token = key().issue(
            &Claims::new(sub).for_audience(AUD_LOGS).with_scope(Scope::app_read(&app)).expires_in(600),
        );
        let mut bytes = token.into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(keys().verify(&tampered, AUD_LOGS).is_err(), "accepted {}", tampered);
    }

    #[test]
    fn truncating_or_extending_fails(cut in 0usize..600, extra in "[A-Za-z0-9_.-]{1,8}") {
        let token = key().issue(&Claims::new("x").for_audience(AUD_API).with_scope("admin"));
        let cut = cut.min(token.len() - 1);
        prop_assert!(keys().verify(&token[..cut], AUD_API).is_err());
        let extended = format!("{token}{extra}");
        prop_assert!(keys().verify(&extended, AUD_API).is_err());
    }

    #[test]
    fn a_token_verifies_only_for_its_own_audiences(
        aud in prop::sample::subsequence(vec![AUD_API, AUD_LOGS, "hydrant-refresh"], 0..=3),
    ) {
        let mut claims = Claims::new("x");
        for a in &aud {
            claims = claims.for_audience(*a);
        }
        let token = key().issue(&claims);
        for wanted in [AUD_API, AUD_LOGS] {
            prop_assert_eq!(keys().verify(&token, wanted).is_ok(), aud.contains(&wanted));
        }
    }

    #[test]
    fn random_strings_never_panic_or_verify(s in ".{0,600}") {
        prop_assert!(keys().verify(&s, AUD_API).is_err());
    }

    #[test]
    fn random_token_shaped_strings_never_verify(
        a in "[A-Za-z0-9_-]{0,200}",
        b in "[A-Za-z0-9_-]{0,300}",
        c in "[A-Za-z0-9_-]{0,90}",
    ) {
        let s = format!("{a}.{b}.{c}");
        prop_assert!(keys().verify(&s, AUD_API).is_err());
    }

    #[test]
    fn random_key_text_and_key_sets_never_panic(s in ".{0,300}") {
        let _ = SigningKey::from_text(&s);
        let _ = KeySet::from_json(s.as_bytes());
    }
}

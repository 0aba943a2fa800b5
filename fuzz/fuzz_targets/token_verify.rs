//! Fuzzes the token verifier (`hydrant_auth::KeySet::verify_at`) and the key-set parser: any
//! bytes, as a bearer token or a `/token_keys` document, must be answered with an error or a
//! verified token, never a panic or an allocation sized by the input.

#![no_main]

use std::sync::OnceLock;

use hydrant_auth::{AUD_LOGS, KeySet, SigningKey};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| SigningKey::generate().map(|k| k.key_set()).unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Nothing random can carry a signature from the key just made.
        assert!(keys().verify_at(text, AUD_LOGS, 0).is_err());
        let _ = hydrant_auth::peek_claims(text);
    }
    let _ = KeySet::from_json(data);
});

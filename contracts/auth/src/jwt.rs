//! The JWT compact form (`base64url(header).base64url(claims).base64url(signature)`): writing
//! it, and taking it apart with structure checks only, before any key or any crypto is used.
//!
//! The invariant: [`split`] looks at no more than [`MAX_TOKEN_BYTES`] of input, decodes the
//! header and signature into fixed stack buffers, allocates nothing sized by the input beyond
//! the header's few JSON strings, and refuses every shape but one `EdDSA` JWT with a short,
//! URL-safe `kid`. Claims are decoded only after the signature has been checked.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::{Error, MAX_TOKEN_BYTES};

/// The only algorithm written or accepted (RFC 8037's name for Ed25519).
pub(crate) const ALG: &str = "EdDSA";
/// An Ed25519 signature is 64 bytes: 86 unpadded base64url characters.
const SIG_TEXT_LEN: usize = 86;
const SIG_BYTES: usize = 64;
/// A real header (`{"alg":"EdDSA","typ":"JWT","kid":"..."}`) is well under this.
const MAX_HEADER_TEXT: usize = 256;
/// Longest key id accepted.
pub(crate) const MAX_KID: usize = 64;

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

#[derive(Deserialize)]
struct HeaderIn {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// A token taken apart, not yet trusted.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signed: &'a str,
    /// The claims segment, still base64url.
    pub(crate) payload: &'a str,
    /// The header's key id.
    pub(crate) kid: String,
    /// The signature.
    pub(crate) signature: [u8; SIG_BYTES],
}

/// True for the characters a key id may hold (base64url's alphabet).
pub(crate) fn is_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The text before the signature: `base64url(header).base64url(claims)`.
pub(crate) fn signing_input(kid: &str, claims: &[u8]) -> String {
    // A header of two constants and a checked kid: serializing cannot fail.
    let header = serde_json::to_vec(&HeaderOut {
        alg: ALG,
        typ: "JWT",
        kid,
    })
    .unwrap_or_default();
    let mut text = String::with_capacity((header.len() + claims.len()) * 4 / 3 + SIG_TEXT_LEN + 4);
    URL_SAFE_NO_PAD.encode_string(&header, &mut text);
    text.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut text);
    text
}

/// Appends `.base64url(signature)` to a signing input.
pub(crate) fn finish(mut signing_input: String, signature: &[u8]) -> String {
    signing_input.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut signing_input);
    signing_input
}

/// Takes a token apart with structure checks only.
///
/// # Errors
/// [`Error::Malformed`] for anything but one well-formed `EdDSA` JWT.
pub(crate) fn split(token: &str) -> Result<Parts<'_>, Error> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::Malformed("longer than 8 KiB"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Malformed(
            "a token is three base64url parts joined by '.' (a JWT)",
        ));
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(Error::Malformed(
            "a token is three base64url parts joined by '.' (a JWT)",
        ));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(Error::Malformed("empty header or claims"));
    }
    if header.len() > MAX_HEADER_TEXT {
        return Err(Error::Malformed("header too long"));
    }
    if sig.len() != SIG_TEXT_LEN {
        return Err(Error::Malformed("signature has the wrong length"));
    }
    let signed = token
        .get(..header.len() + 1 + payload.len())
        .ok_or(Error::Malformed("a token is three base64url parts"))?;

    let mut header_bytes = [0u8; MAX_HEADER_TEXT];
    let n = URL_SAFE_NO_PAD
        .decode_slice(header, &mut header_bytes)
        .map_err(|_| Error::Malformed("header is not base64url"))?;
    let header: HeaderIn = serde_json::from_slice(header_bytes.get(..n).unwrap_or_default())
        .map_err(|_| Error::Malformed("header is not a JWT header"))?;
    if header.alg != ALG {
        return Err(Error::Malformed("algorithm is not EdDSA"));
    }
    let kid = header
        .kid
        .filter(|k| is_kid(k))
        .ok_or(Error::Malformed("header has no valid kid"))?;

    let mut signature = [0u8; SIG_BYTES + 2];
    let n = URL_SAFE_NO_PAD
        .decode_slice(sig, &mut signature)
        .map_err(|_| Error::Malformed("signature is not base64url"))?;
    let mut exact = [0u8; SIG_BYTES];
    match signature.get(..n) {
        Some(bytes) if n == SIG_BYTES => exact.copy_from_slice(bytes),
        _ => return Err(Error::Malformed("signature has the wrong length")),
    }
    Ok(Parts {
        signed,
        payload,
        kid,
        signature: exact,
    })
}

/// Decodes the claims of a token whose signature has been checked.
///
/// # Errors
/// [`Error::Malformed`] when they are not base64url JSON claims.
pub(crate) fn claims(payload: &str) -> Result<crate::Claims, Error> {
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Error::Malformed("claims are not base64url"))?;
    serde_json::from_slice(&json).map_err(|_| Error::Malformed("claims are not valid JSON claims"))
}

/// The claims of a token, read without checking its signature: for a holder inspecting its
/// own token (when does it expire?), never for an access decision.
///
/// # Errors
/// [`Error::Malformed`] when the text is not a JWT.
pub fn peek_claims(token: &str) -> Result<crate::Claims, Error> {
    claims(split(token)?.payload)
}

//! The one error type of the envelope crate: what was wrong with bytes read off the wire.

/// Why an encoded envelope or batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes end in the middle of a field.
    #[error("truncated protobuf: a field runs past the end of the message")]
    Truncated,
    /// A varint is longer than 10 bytes.
    #[error("malformed protobuf: varint longer than 10 bytes")]
    VarintOverflow,
    /// A wire type that proto3 does not use (groups, or 6/7).
    #[error("malformed protobuf: unsupported wire type {0}")]
    WireType(u8),
    /// A field key that protobuf forbids: field number 0, or a key wider than 32 bits.
    #[error("malformed protobuf: invalid field key {0}")]
    InvalidKey(u64),
    /// A known field arrived with the wrong wire type.
    #[error("malformed envelope: field {field} has wire type {got}, expected {expected}")]
    FieldType {
        /// The field number.
        field: u32,
        /// The wire type seen.
        got: u8,
        /// The wire type the schema requires.
        expected: u8,
    },
    /// A `string` field holds bytes that are not UTF-8.
    #[error("malformed envelope: field {0} is not valid UTF-8")]
    Utf8(&'static str),
    /// The envelope is larger than [`crate::MAX_ENVELOPE_BYTES`].
    #[error("envelope of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A subscription cursor (`?cursor=`) that is not one this platform wrote.
    #[error("malformed cursor: {0}; reconnect without ?cursor= to start from live data")]
    Cursor(&'static str),
}

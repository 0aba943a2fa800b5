//! The buffer crate's one error type: what is wrong with a [`crate::BufferConfig`].

/// Why a buffer configuration cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A limit of zero would drop everything pushed.
    #[error("buffer limit `{0}` is 0, so every entry would be dropped; set it to at least 1")]
    ZeroLimit(&'static str),
}

//! [`Batch`]: envelopes as the firehose sent them, still encoded.
//!
//! A consumer that only counts, filters or forwards never pays for a prost decode: it walks the
//! batch as zero-copy [`EnvelopeView`]s. Decoding to `v2::Envelope` is there on demand.
//!
//! Invariant: a `Batch` holds a valid encoded `EnvelopeBatch` whose every envelope passed
//! [`EnvelopeView::parse`], so iterating it never yields an error.

use std::sync::Arc;

use bytes::Bytes;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{BatchIter, EnvelopeView, split_batch};
use prost::Message;

use crate::Error;

/// A run of envelopes in stream order, as one encoded `loggregator.v2.EnvelopeBatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
    len: usize,
    /// The subscription's cursor after this batch, when it ended a frame that carried one.
    cursor: Option<Arc<str>>,
}

impl Batch {
    /// Wraps bytes already known to be valid (the client's own splitter checked them).
    pub(crate) fn trusted(bytes: Bytes, len: usize) -> Self {
        Self {
            bytes,
            len,
            cursor: None,
        }
    }

    pub(crate) fn set_cursor(&mut self, cursor: Arc<str>) {
        self.cursor = Some(cursor);
    }

    /// The subscription's cursor right after this batch (the edge sends one with every frame;
    /// only a frame's last batch carries it). A consumer that has durably handled everything up
    /// to here can keep it and resume from it later with
    /// [`FirehoseClient::resume`](crate::FirehoseClient::resume): it is then sent what came
    /// after, and nothing before.
    #[must_use]
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Validates an encoded `EnvelopeBatch` (every envelope must parse).
    ///
    /// # Errors
    /// The first structural problem found.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, Error> {
        let mut len = 0;
        for envelope in BatchIter::new(&bytes) {
            EnvelopeView::parse(envelope?)?;
            len += 1;
        }
        Ok(Self {
            bytes,
            len,
            cursor: None,
        })
    }

    /// Encodes decoded envelopes as a batch (the slow path, for recent logs and tests).
    /// Envelopes the wire walker would reject (over `MAX_ENVELOPE_BYTES`) are left out, so
    /// the batch keeps its invariant.
    #[must_use]
    pub fn from_envelopes<'a>(envelopes: impl IntoIterator<Item = &'a v2::Envelope>) -> Self {
        let mut builder = hydrant_envelope::wire::BatchBuilder::default();
        for e in envelopes {
            let encoded = e.encode_to_vec();
            if EnvelopeView::parse(&encoded).is_ok() {
                builder.push(&encoded);
            }
        }
        let len = builder.count();
        Self {
            bytes: builder.take(),
            len,
            cursor: None,
        }
    }

    /// The encoded `EnvelopeBatch`, ready to forward.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded `EnvelopeBatch`, by value.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Number of envelopes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the batch holds no envelope.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The envelopes as zero-copy views, in stream order.
    pub fn iter(&self) -> impl Iterator<Item = EnvelopeView<'_>> + '_ {
        BatchIter::new(&self.bytes)
            .filter_map(Result::ok)
            .filter_map(|e| EnvelopeView::parse(e).ok())
    }

    /// Each envelope as its own encoded `Bytes`, sharing this batch's buffer.
    pub fn envelopes(&self) -> impl Iterator<Item = Bytes> + '_ {
        split_batch(&self.bytes).filter_map(Result::ok)
    }

    /// Decodes every envelope with prost.
    ///
    /// # Errors
    /// [`Error::Decode`] if prost rejects the batch (it should not: the views validated it).
    pub fn decode(&self) -> Result<Vec<v2::Envelope>, Error> {
        v2::EnvelopeBatch::decode(self.bytes.clone())
            .map(|b| b.batch)
            .map_err(|e| Error::Decode(e.to_string()))
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = EnvelopeView<'a>;
    type IntoIter = Box<dyn Iterator<Item = EnvelopeView<'a>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(source: &str, text: &str) -> v2::Envelope {
        v2::Envelope {
            source_id: source.to_owned(),
            timestamp: 7,
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::copy_from_slice(text.as_bytes()),
                r#type: 0,
            })),
            ..v2::Envelope::default()
        }
    }

    #[test]
    fn round_trips_views_and_decode() {
        let envs = [log("a", "one"), log("b", "two")];
        let batch = Batch::from_envelopes(&envs);
        assert_eq!(batch.len(), 2);
        let sources: Vec<&str> = batch.iter().map(|v| v.source_id).collect();
        assert_eq!(sources, ["a", "b"]);
        assert_eq!(batch.decode().unwrap(), envs);
        assert_eq!(batch.envelopes().count(), 2);
        let again = Batch::from_bytes(batch.bytes().clone()).unwrap();
        assert_eq!(again, batch);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Batch::from_bytes(Bytes::from_static(&[0x0a, 0x05, 1])).is_err());
    }
}

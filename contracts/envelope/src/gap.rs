//! The in-band gap marker: an `Event` envelope that tells a consumer it lost envelopes, how many,
//! at which hop and why.
//!
//! Loggregator counts drops only in metrics, so a consumer never learns that its own stream has a
//! hole. Hydrant puts the marker in the stream itself, where the loss happened. It is an ordinary
//! v2 `Event`, so stock consumers see it as an event and skip it; Hydrant's firehose client
//! surfaces it as a typed gap.

use std::collections::HashMap;

use bytes::Bytes;

use crate::v2;
use crate::wire::EnvelopeView;

/// `Event.title` of a gap marker.
pub const GAP_TITLE: &str = "hydrant.gap";
/// The `source_id` of gap markers made for a whole stream rather than one source.
pub const GAP_SOURCE: &str = "hydrant";

/// A counted loss, as carried by a gap marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The source that lost data, or [`GAP_SOURCE`] when the loss spans sources.
    pub source_id: String,
    /// How many envelopes were lost.
    pub dropped: u64,
    /// The hop that dropped them (`agent`, `doppler`, `firehose`, ...).
    pub hop: String,
    /// Why (`slow_consumer`, `ring_overflow`, ...).
    pub reason: String,
}

impl Gap {
    /// The marker envelope, stamped now.
    #[must_use]
    pub fn to_envelope(&self) -> v2::Envelope {
        let tags = HashMap::from([
            ("hydrant.gap.dropped".to_owned(), self.dropped.to_string()),
            ("hydrant.gap.hop".to_owned(), self.hop.clone()),
            ("hydrant.gap.reason".to_owned(), self.reason.clone()),
        ]);
        v2::Envelope {
            timestamp: crate::now_nanos(),
            source_id: self.source_id.clone(),
            tags,
            message: Some(v2::envelope::Message::Event(v2::Event {
                title: GAP_TITLE.to_owned(),
                body: format!(
                    "{} envelopes lost at {} ({})",
                    self.dropped, self.hop, self.reason
                ),
            })),
            ..v2::Envelope::default()
        }
    }

    /// The encoded marker envelope.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        crate::wire::encode(&self.to_envelope())
    }

    /// Reads a gap marker back; `None` for any other envelope.
    #[must_use]
    pub fn from_view(view: &EnvelopeView<'_>) -> Option<Self> {
        let (title, _) = view.event()?;
        if title != GAP_TITLE {
            return None;
        }
        Some(Self {
            source_id: view.source_id.to_owned(),
            dropped: view.tag("hydrant.gap.dropped")?.parse().ok()?,
            hop: view.tag("hydrant.gap.hop").unwrap_or_default().to_owned(),
            reason: view
                .tag("hydrant.gap.reason")
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

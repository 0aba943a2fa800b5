//! The in-band gap marker: an `Event` envelope that tells a consumer it lost envelopes, how many,
//! at which hop and why.
//!
//! Loggregator counts drops only in metrics, so a consumer never learns that its own stream has a
//! hole. Hydrant puts the marker in the stream itself, where the loss happened. It is an ordinary
//! v2 `Event`, so stock consumers see it as an event and skip it; Hydrant's firehose client
//! surfaces it as a typed gap.
//!
//! Whose envelopes: a hop that knows which sources lost envelopes says so in the marker's tags
//! ([`BySource`]: `hydrant.gap.source.<source_id>` per named source, most lost first, and
//! `hydrant.gap.other` for the rest), so an operator sees which apps a nozzle missed. Invariant:
//! when a marker names sources, the named counts plus `other` equal `hydrant.gap.dropped`; a
//! marker read back whose parts do not add up keeps only its total.

use std::collections::HashMap;

use bytes::Bytes;

use crate::v2;
use crate::wire::EnvelopeView;

/// Tag key prefix of one named source's share of a gap: `hydrant.gap.source.<source_id>`.
pub const GAP_SOURCE_TAG: &str = "hydrant.gap.source.";
/// Tag key of the envelopes lost from sources a marker does not name.
pub const GAP_OTHER_TAG: &str = "hydrant.gap.other";
/// Sources a marker names by default; the rest are summed as `other`.
pub const GAP_TOP_SOURCES: usize = 8;
/// Most sources a marker read back may name: a marker is input, and what it names beyond this
/// is summed as `other`.
pub const MAX_GAP_SOURCES: usize = 64;

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
    /// Whose envelopes were lost, when the hop knows (empty when it does not).
    pub by_source: BySource,
}

/// A loss split by source: the sources that lost most, by name, and the rest summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BySource {
    /// Named sources and their counts, most lost first (ties by source id); no zero counts.
    pub top: Vec<(String, u64)>,
    /// Lost from sources not named: beyond the top, or that the hop could not attribute.
    pub other: u64,
}

impl BySource {
    /// Folds per-source counts into the `n` largest and `other` (which starts at
    /// `unattributed`). The total is preserved: `top` plus `other` sum to the counts plus
    /// `unattributed` (saturating). A source given twice is summed.
    #[must_use]
    pub fn top_n(
        counts: impl IntoIterator<Item = (String, u64)>,
        unattributed: u64,
        n: usize,
    ) -> Self {
        let mut all: Vec<(String, u64)> = counts.into_iter().filter(|(_, c)| *c > 0).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Duplicates are adjacent once sorted by name.
        all.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(next.1);
            }
            same
        });
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = all.split_off(n.min(all.len()));
        let other = rest
            .iter()
            .fold(unattributed, |sum, (_, c)| sum.saturating_add(*c));
        Self { top: all, other }
    }

    /// True when no source is named and nothing is in `other`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.top.is_empty() && self.other == 0
    }

    /// Every envelope counted: the named ones plus `other` (saturating).
    #[must_use]
    pub fn total(&self) -> u64 {
        self.top
            .iter()
            .fold(self.other, |sum, (_, c)| sum.saturating_add(*c))
    }

    /// The count of `source_id` when it is named.
    #[must_use]
    pub fn get(&self, source_id: &str) -> Option<u64> {
        self.top
            .iter()
            .find(|(s, _)| s == source_id)
            .map(|(_, c)| *c)
    }

    /// Only what `sources` lost: their named counts, and `other` kept as what may be theirs
    /// too (it could not be attributed). Empty when none of them is named and `other` is 0.
    #[must_use]
    pub fn only(&self, sources: &[String]) -> Self {
        Self {
            top: self
                .top
                .iter()
                .filter(|(s, _)| sources.contains(s))
                .cloned()
                .collect(),
            other: self.other,
        }
    }
}

impl Gap {
    /// The marker envelope, stamped now.
    #[must_use]
    pub fn to_envelope(&self) -> v2::Envelope {
        let mut tags = HashMap::from([
            ("hydrant.gap.dropped".to_owned(), self.dropped.to_string()),
            ("hydrant.gap.hop".to_owned(), self.hop.clone()),
            ("hydrant.gap.reason".to_owned(), self.reason.clone()),
        ]);
        if !self.by_source.is_empty() {
            for (source, count) in &self.by_source.top {
                tags.insert(format!("{GAP_SOURCE_TAG}{source}"), count.to_string());
            }
            tags.insert(GAP_OTHER_TAG.to_owned(), self.by_source.other.to_string());
        }
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
        let dropped = view.tag("hydrant.gap.dropped")?.parse().ok()?;
        Some(Self {
            source_id: view.source_id.to_owned(),
            dropped,
            hop: view.tag("hydrant.gap.hop").unwrap_or_default().to_owned(),
            reason: view
                .tag("hydrant.gap.reason")
                .unwrap_or_default()
                .to_owned(),
            by_source: read_by_source(view, dropped),
        })
    }
}

/// The marker's per-source tags; empty when it has none or they do not add up to `dropped`.
fn read_by_source(view: &EnvelopeView<'_>, dropped: u64) -> BySource {
    let Some(other) = view.tag(GAP_OTHER_TAG).and_then(|v| v.parse::<u64>().ok()) else {
        return BySource::default();
    };
    let named = view.tags().filter_map(|(key, value)| {
        let source = key.strip_prefix(GAP_SOURCE_TAG)?;
        Some((source.to_owned(), value.parse::<u64>().ok()?))
    });
    // At most MAX_GAP_SOURCES + 1 names are held at once: the rest fold into `other` as they come.
    let mut by = BySource {
        top: Vec::new(),
        other,
    };
    for (source, count) in named {
        by.top.push((source, count));
        if by.top.len() > MAX_GAP_SOURCES {
            by = BySource::top_n(std::mem::take(&mut by.top), by.other, MAX_GAP_SOURCES);
        }
    }
    let by = BySource::top_n(by.top, by.other, MAX_GAP_SOURCES);
    if by.total() == dropped {
        by
    } else {
        BySource::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(gap: &Gap) -> Option<Gap> {
        let bytes = gap.encode();
        Gap::from_view(&EnvelopeView::parse(&bytes).ok()?)
    }

    #[test]
    fn a_marker_names_its_sources_and_reads_back() {
        let by = BySource::top_n(
            [
                ("b".to_owned(), 5),
                ("a".to_owned(), 120),
                ("c".to_owned(), 5),
            ],
            0,
            2,
        );
        assert_eq!(by.top, [("a".to_owned(), 120), ("b".to_owned(), 5)]);
        assert_eq!(by.other, 5, "c is beyond the top two");
        let gap = Gap {
            source_id: GAP_SOURCE.to_owned(),
            dropped: 130,
            hop: "doppler".to_owned(),
            reason: "replay_window".to_owned(),
            by_source: by,
        };
        assert_eq!(round_trip(&gap), Some(gap.clone()));
        let plain = Gap {
            by_source: BySource::default(),
            ..gap
        };
        assert_eq!(
            round_trip(&plain),
            Some(plain.clone()),
            "no tags, no breakdown"
        );
    }

    #[test]
    fn a_marker_whose_parts_do_not_add_up_keeps_only_its_total() {
        let gap = Gap {
            source_id: GAP_SOURCE.to_owned(),
            dropped: 10,
            hop: "x".to_owned(),
            reason: "y".to_owned(),
            by_source: BySource {
                top: vec![("a".to_owned(), 3)],
                other: 1,
            },
        };
        let back = round_trip(&gap).unwrap();
        assert_eq!(back.dropped, 10);
        assert!(back.by_source.is_empty());
    }

    #[test]
    fn only_keeps_the_asked_sources_and_what_could_be_theirs() {
        let by = BySource {
            top: vec![("a".to_owned(), 7), ("b".to_owned(), 2)],
            other: 1,
        };
        let mine = by.only(&["b".to_owned()]);
        assert_eq!(mine.top, [("b".to_owned(), 2)]);
        assert_eq!(mine.total(), 3);
    }

    proptest! {
        #[test]
        fn folding_into_top_n_and_other_preserves_the_sum(
            counts in proptest::collection::vec(("[a-e]{1,2}", 0u64..1_000_000), 0..40),
            unattributed in 0u64..1_000,
            n in 0usize..12,
        ) {
            let sum: u64 = counts.iter().map(|(_, c)| c).sum::<u64>() + unattributed;
            let by = BySource::top_n(counts.clone(), unattributed, n);
            prop_assert_eq!(by.total(), sum);
            prop_assert!(by.top.len() <= n);
            prop_assert!(by.top.iter().all(|(_, c)| *c > 0));
            prop_assert!(by.top.windows(2).all(|w| w[0].1 >= w[1].1), "most lost first");
            // Every named count is exact: the sum of that source's inputs.
            for (s, c) in &by.top {
                let want: u64 = counts.iter().filter(|(x, _)| x == s).map(|(_, c)| c).sum();
                prop_assert_eq!(*c, want);
            }
            // Nothing left out is larger than something named.
            let smallest = by.top.last().map_or(u64::MAX, |(_, c)| *c);
            for s in counts.iter().map(|(s, _)| s) {
                if by.get(s).is_none() {
                    let its: u64 = counts.iter().filter(|(x, _)| x == s).map(|(_, c)| c).sum();
                    prop_assert!(its == 0 || (by.top.len() == n && its <= smallest));
                }
            }
            let gap = Gap {
                source_id: GAP_SOURCE.to_owned(),
                dropped: sum,
                hop: "h".to_owned(),
                reason: "r".to_owned(),
                by_source: by,
            };
            prop_assert_eq!(round_trip(&gap), Some(gap));
        }
    }
}

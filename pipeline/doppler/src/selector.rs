//! Egress requests turned into routes: Loggregator's v2 selector semantics, parsed once per
//! subscription so routing an envelope compares bytes, never strings it has to build.
//!
//! Where it sits: the egress service parses an `EgressBatchRequest`/`EgressRequest` into a
//! [`SubscriptionRequest`]; the router indexes its routes by source id.
//!
//! Semantics kept (Loggregator's doppler and go-pubsub):
//! - each selector is its own subscription; an envelope matching two selectors of one request is
//!   delivered twice;
//! - `source_id == ""` matches every source;
//! - a selector without a message type is ignored; a request with no usable selector gets no data;
//! - `CounterSelector.name` must equal the counter's name exactly, empty means every counter;
//! - `GaugeSelector.names` matches a gauge whose set of metric names is exactly those names,
//!   empty means every gauge;
//! - `legacy_selector` is used only when `selectors` is empty (as the reverse log proxy does).

use hydrant_envelope::v2;

/// Most selectors one request may carry: every selector is a route the router checks for every
/// matching envelope, so an unbounded list would let one client slow everyone's routing.
pub const MAX_SELECTORS: usize = 64;
/// Most names one gauge selector may list.
pub const MAX_GAUGE_NAMES: usize = 256;

/// Which envelopes of a source a route wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    /// Every `Log`.
    Log,
    /// `Counter`s with exactly this name; empty means every counter.
    Counter(Box<[u8]>),
    /// `Gauge`s whose metric names are exactly this set (sorted, de-duplicated); empty means
    /// every gauge.
    Gauge(Vec<Box<[u8]>>),
    /// Every `Timer`.
    Timer,
    /// Every `Event`.
    Event,
}

/// One selector, ready for the router.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The source it wants; empty means every source.
    pub source_id: Box<[u8]>,
    /// Which envelopes of that source.
    pub filter: Filter,
}

/// A parsed egress request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// One route per usable selector, in request order (duplicates kept).
    pub routes: Vec<Route>,
    /// Subscriptions with the same non-empty shard id and the same selector split the envelopes
    /// between them; empty means this subscription gets every matching envelope.
    pub shard_id: String,
    /// Whether `deterministic_name` was set: counters and gauges then go to the shard member
    /// picked by a hash of their names, so one metric always reaches the same consumer.
    pub deterministic: bool,
}

/// Why an egress request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Too many selectors.
    #[error("too many selectors: {0} (at most {MAX_SELECTORS} per request; open more streams)")]
    TooManySelectors(usize),
    /// A gauge selector lists too many names.
    #[error("gauge selector lists {0} names (at most {MAX_GAUGE_NAMES})")]
    TooManyGaugeNames(usize),
}

impl SubscriptionRequest {
    /// Parses the fields shared by `EgressRequest` and `EgressBatchRequest`.
    ///
    /// # Errors
    /// More than [`MAX_SELECTORS`] selectors or [`MAX_GAUGE_NAMES`] names in one selector.
    pub fn parse(
        shard_id: String,
        legacy_selector: Option<v2::Selector>,
        selectors: Vec<v2::Selector>,
        deterministic_name: &str,
    ) -> Result<Self, RequestError> {
        let selectors = if selectors.is_empty() {
            legacy_selector.into_iter().collect()
        } else {
            selectors
        };
        if selectors.len() > MAX_SELECTORS {
            return Err(RequestError::TooManySelectors(selectors.len()));
        }
        let mut routes = Vec::with_capacity(selectors.len());
        for selector in selectors {
            use v2::selector::Message;
            let filter = match selector.message {
                None => continue,
                Some(Message::Log(_)) => Filter::Log,
                Some(Message::Timer(_)) => Filter::Timer,
                Some(Message::Event(_)) => Filter::Event,
                Some(Message::Counter(c)) => Filter::Counter(c.name.into_bytes().into()),
                Some(Message::Gauge(g)) => {
                    if g.names.len() > MAX_GAUGE_NAMES {
                        return Err(RequestError::TooManyGaugeNames(g.names.len()));
                    }
                    let mut names: Vec<Box<[u8]>> =
                        g.names.into_iter().map(|n| n.into_bytes().into()).collect();
                    names.sort_unstable();
                    names.dedup();
                    Filter::Gauge(names)
                }
            };
            routes.push(Route {
                source_id: selector.source_id.into_bytes().into(),
                filter,
            });
        }
        Ok(Self {
            routes,
            shard_id,
            deterministic: !deterministic_name.is_empty(),
        })
    }
}

/// Go's `crc64.Checksum(data, crc64.MakeTable(crc64.ECMA))` (CRC-64/XZ), the hash Loggregator
/// uses for `deterministic_name` routing.
#[must_use]
pub fn crc64_ecma(data: &[u8]) -> u64 {
    let mut crc = !0u64;
    for &byte in data {
        crc = CRC64_TABLE[((crc as u8) ^ byte) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC64_TABLE: [u64; 256] = {
    const POLY: u64 = 0xC96C_5795_D787_0F42;
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(source: &str, message: Option<v2::selector::Message>) -> v2::Selector {
        v2::Selector {
            source_id: source.to_owned(),
            message,
        }
    }

    #[test]
    fn crc64_matches_the_published_check_value() {
        assert_eq!(crc64_ecma(b"123456789"), 0x995D_C9BB_DF19_39FA);
        assert_eq!(crc64_ecma(b""), 0);
    }

    #[test]
    fn selectors_without_a_type_are_ignored_and_gauge_names_normalised() {
        use v2::selector::Message;
        let req = SubscriptionRequest::parse(
            String::new(),
            None,
            vec![
                selector("a", None),
                selector("a", Some(Message::Log(v2::LogSelector {}))),
                selector(
                    "",
                    Some(Message::Gauge(v2::GaugeSelector {
                        names: vec!["b".into(), "a".into(), "b".into()],
                    })),
                ),
            ],
            "",
        )
        .unwrap();
        assert_eq!(req.routes.len(), 2);
        assert_eq!(
            req.routes[1].filter,
            Filter::Gauge(vec![b"a"[..].into(), b"b"[..].into()])
        );
        assert!(req.routes[1].source_id.is_empty());
    }

    #[test]
    fn legacy_selector_only_when_no_selectors() {
        use v2::selector::Message;
        let legacy = selector("old", Some(Message::Log(v2::LogSelector {})));
        let only =
            SubscriptionRequest::parse(String::new(), Some(legacy.clone()), vec![], "").unwrap();
        assert_eq!(&*only.routes[0].source_id, b"old");
        let both = SubscriptionRequest::parse(
            String::new(),
            Some(legacy),
            vec![selector("new", Some(Message::Timer(v2::TimerSelector {})))],
            "x",
        )
        .unwrap();
        assert_eq!(both.routes.len(), 1);
        assert_eq!(&*both.routes[0].source_id, b"new");
        assert!(both.deterministic);
    }

    #[test]
    fn oversized_requests_are_refused() {
        use v2::selector::Message;
        let many = vec![selector("", Some(Message::Log(v2::LogSelector {}))); MAX_SELECTORS + 1];
        let err = SubscriptionRequest::parse(String::new(), None, many, "").unwrap_err();
        assert!(err.to_string().contains("too many selectors"));
    }
}

//! Envelope builders for tests that feed v2 envelopes to a role, a nozzle's mapping or the
//! rolling windows: one way to spell an envelope, its tags and its gauge, counter and timer
//! messages, so a test states only the fields it is about.
//!
//! Builders set exactly what they are given and leave every other field at its default, so a
//! test that asserts on a field also names it.

use std::collections::HashMap;

use hydrant_envelope::v2;

/// The tags the platform puts on an app's web-process envelopes: app `web` in space `dev` of
/// org `demo`.
pub const APP_TAGS: [(&str, &str); 4] = [
    ("source_type", "APP/PROC/WEB"),
    ("organization_name", "demo"),
    ("space_name", "dev"),
    ("app_name", "web"),
];

/// Tags as the envelope carries them, from `(key, value)` pairs.
#[must_use]
pub fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// An envelope from `source`/`instance` at `timestamp` (UNIX nanoseconds), tagged with `tag_pairs`,
/// carrying `message`.
#[must_use]
pub fn envelope(
    timestamp: i64,
    source: &str,
    instance: &str,
    tag_pairs: &[(&str, &str)],
    message: v2::envelope::Message,
) -> v2::Envelope {
    v2::Envelope {
        timestamp,
        source_id: source.to_owned(),
        instance_id: instance.to_owned(),
        tags: tags(tag_pairs),
        message: Some(message),
        ..v2::Envelope::default()
    }
}

/// A gauge message of `(name, value, unit)` metrics.
#[must_use]
pub fn gauge(metrics: &[(&str, f64, &str)]) -> v2::envelope::Message {
    v2::envelope::Message::Gauge(v2::Gauge {
        metrics: metrics
            .iter()
            .map(|&(name, value, unit)| {
                let value = v2::GaugeValue {
                    unit: unit.to_owned(),
                    value,
                };
                (name.to_owned(), value)
            })
            .collect(),
    })
}

/// A counter message.
#[must_use]
pub fn counter(name: &str, delta: u64, total: u64) -> v2::envelope::Message {
    v2::envelope::Message::Counter(v2::Counter {
        name: name.to_owned(),
        delta,
        total,
    })
}

/// A timer message from `start` to `stop` (UNIX nanoseconds).
#[must_use]
pub fn timer(name: &str, start: i64, stop: i64) -> v2::envelope::Message {
    v2::envelope::Message::Timer(v2::Timer {
        name: name.to_owned(),
        start,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_they_are_given_and_nothing_else() {
        let e = envelope(7, "app", "2", &[("k", "v")], counter("c", 1, 5));
        assert_eq!(e.timestamp, 7);
        assert_eq!(e.source_id, "app");
        assert_eq!(e.instance_id, "2");
        assert_eq!(e.tags, HashMap::from([("k".to_owned(), "v".to_owned())]));
        assert!(e.deprecated_tags.is_empty());
        let Some(v2::envelope::Message::Gauge(g)) =
            envelope(0, "a", "0", &[], gauge(&[("cpu", 1.5, "percentage")])).message
        else {
            panic!("not a gauge");
        };
        assert_eq!(g.metrics["cpu"].unit, "percentage");
        assert!((g.metrics["cpu"].value - 1.5).abs() < f64::EPSILON);
    }
}

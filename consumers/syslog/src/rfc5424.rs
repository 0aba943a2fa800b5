//! The RFC 5424 encoder: one envelope in, the lines Cloud Foundry's syslog agent would write
//! out, each framed with an RFC 6587 octet count.
//!
//! Flow: firehose batch → [`EnvelopeView`] → [`encode`] → destination queues → transport.
//!
//! Line format (consumers.md §2.2, §2.3), byte-compatible with CF's drains:
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME [PROCID] - SD MSG\n`, PRI 14 for `OUT` and metrics,
//! 11 for `ERR`; timestamps in UTC with trimmed microseconds and `+00:00`; a gauge with N
//! metrics becomes N lines.
//!
//! Invariants: whatever the envelope holds, every frame is one syntactically valid RFC 5424
//! message — header fields are reduced to printable ASCII and cut to their RFC lengths,
//! structured-data names to their allowed characters, values escaped (`\`, `"`, `]`), NUL
//! bytes removed — and the octet count is the exact length of what follows it, so a payload
//! with newlines or a fake syslog header inside is still one message.

use hydrant_envelope::wire::{EnvelopeView, Fields, Kind, Value};
use serde::{Deserialize, Serialize};

/// Cloud Foundry Foundation's IANA private enterprise number, used in every SD-ID.
pub const ENTERPRISE: &str = "47450";

/// Which envelopes a drain receives, as Cloud Foundry's `drain-data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainData {
    /// Logs and events (Cloud Foundry's default).
    #[default]
    Logs,
    /// Counters and gauges.
    Metrics,
    /// Timers.
    Traces,
    /// Everything.
    All,
}

impl DrainData {
    fn wants(self, kind: Kind) -> bool {
        match (self, kind) {
            (_, Kind::None) => false,
            (DrainData::All, _) => true,
            (DrainData::Logs, k) => matches!(k, Kind::Log | Kind::Event),
            (DrainData::Metrics, k) => matches!(k, Kind::Counter | Kind::Gauge),
            (DrainData::Traces, k) => k == Kind::Timer,
        }
    }
}

/// How envelopes are turned into lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncoderOptions {
    /// HOSTNAME when the envelope has none of `organization_name`, `space_name`, `app_name`.
    pub hostname: String,
    /// Write the `tags@47450` element (CF's `disable-metadata=true` turns it off).
    pub metadata: bool,
    /// Which envelopes produce lines.
    pub drain_data: DrainData,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            hostname: "hydrant".to_owned(),
            metadata: true,
            drain_data: DrainData::Logs,
        }
    }
}

/// Appends the octet-counted frames (`LEN SP MSG`) for `view` to `out`; returns how many.
/// Envelopes the options filter out produce none.
pub fn encode(view: &EnvelopeView<'_>, options: &EncoderOptions, out: &mut Vec<u8>) -> usize {
    let mut n = 0;
    each_message(view, options, out, |out, start| {
        // The count goes in front of a message already written: shift it right by the
        // prefix's width rather than build the message elsewhere and copy it back.
        let end = out.len();
        let mut digits = [0u8; 20];
        let digits = decimal(&mut digits, (end - start) as u64);
        let width = digits.len() + 1;
        out.resize(end + width, 0);
        out.copy_within(start..end, start + width);
        out[start..start + digits.len()].copy_from_slice(digits);
        out[start + digits.len()] = b' ';
        n += 1;
    });
    n
}

/// The unframed messages for `view`, one `Vec` each (tests and tools; the hot path is
/// [`encode`]).
#[must_use]
pub fn encode_messages(view: &EnvelopeView<'_>, options: &EncoderOptions) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    each_message(view, options, &mut buf, |out, start| {
        starts.push((start, out.len()));
    });
    starts.iter().map(|&(a, b)| buf[a..b].to_vec()).collect()
}

/// Writes each message for `view` at the end of `out` and calls `done(out, start)` after it.
fn each_message(
    view: &EnvelopeView<'_>,
    options: &EncoderOptions,
    out: &mut Vec<u8>,
    mut done: impl FnMut(&mut Vec<u8>, usize),
) {
    if !options.drain_data.wants(view.kind) {
        return;
    }
    let mut tags: Vec<(&str, &str)> = if options.metadata {
        view.tags().collect()
    } else {
        Vec::new()
    };
    // Keys sorted, last value wins for a repeated key (as in a decoded map).
    tags.reverse();
    tags.sort_by(|a, b| a.0.cmp(b.0));
    tags.dedup_by(|a, b| a.0 == b.0);
    match view.kind {
        Kind::Log => {
            let (payload, is_err) = view.log().unwrap_or_default();
            let start = out.len();
            let source_type = view.tag("source_type").unwrap_or("");
            header(out, if is_err { 11 } else { 14 }, view, &options.hostname);
            procid(out, Some(source_type), view.instance_id);
            out.extend_from_slice(b" - ");
            tags_sd(out, &tags, true);
            out.push(b' ');
            out.extend(payload.iter().copied().filter(|&b| b != 0));
            if out.last() != Some(&b'\n') || out.len() == start {
                out.push(b'\n');
            }
            done(out, start);
        }
        Kind::Gauge => {
            for (name, value, unit) in view.gauge_values() {
                let start = metric_head(out, view, &options.hostname);
                sd_open(out, "gauge");
                param(out, "name", name);
                param(out, "value", &go_float(value));
                param(out, "unit", unit);
                out.push(b']');
                metric_tail(out, &tags);
                done(out, start);
            }
        }
        Kind::Counter => {
            let (mut name, mut delta, mut total) = ("", 0u64, 0u64);
            for field in Fields::new(view.body()).flatten() {
                match field {
                    (1, Value::Len(b)) => name = std::str::from_utf8(b).unwrap_or(""),
                    (2, Value::Varint(v)) => delta = v,
                    (3, Value::Varint(v)) => total = v,
                    _ => {}
                }
            }
            let start = metric_head(out, view, &options.hostname);
            sd_open(out, "counter");
            param(out, "name", name);
            param(out, "total", decimal_str(&mut [0; 20], total));
            param(out, "delta", decimal_str(&mut [0; 20], delta));
            out.push(b']');
            metric_tail(out, &tags);
            done(out, start);
        }
        Kind::Timer => {
            let (start_ns, stop_ns) = view.timer_span().unwrap_or_default();
            let start = metric_head(out, view, &options.hostname);
            sd_open(out, "timer");
            param(out, "name", view.timer_name().unwrap_or(""));
            param(out, "start", &start_ns.to_string());
            param(out, "stop", &stop_ns.to_string());
            out.push(b']');
            metric_tail(out, &tags);
            done(out, start);
        }
        Kind::Event => {
            let (title, body) = view.event().unwrap_or_default();
            let start = metric_head(out, view, &options.hostname);
            sd_open(out, "event");
            param(out, "title", title);
            param(out, "body", body);
            out.push(b']');
            metric_tail(out, &tags);
            done(out, start);
        }
        Kind::None => {}
    }
}

fn metric_head(out: &mut Vec<u8>, view: &EnvelopeView<'_>, fallback_host: &str) -> usize {
    let start = out.len();
    header(out, 14, view, fallback_host);
    procid(out, None, view.instance_id);
    out.extend_from_slice(b" - ");
    start
}

fn metric_tail(out: &mut Vec<u8>, tags: &[(&str, &str)]) {
    tags_sd(out, tags, false);
    out.extend_from_slice(b" \n");
}

fn header(out: &mut Vec<u8>, pri: u8, view: &EnvelopeView<'_>, fallback_host: &str) {
    out.push(b'<');
    out.extend_from_slice(decimal(&mut [0; 20], u64::from(pri)));
    out.extend_from_slice(b">1 ");
    timestamp(out, view.timestamp);
    out.push(b' ');
    hostname(out, view, fallback_host);
    out.push(b' ');
    printable_field(out, view.source_id, 48);
    out.push(b' ');
}

/// `[SOURCE-TYPE/instance]` for logs, `[instance]` for metrics; cut to PROCID's 128.
fn procid(out: &mut Vec<u8>, source_type: Option<&str>, instance: &str) {
    const MAX: usize = 128;
    let start = out.len();
    // Written straight into `out`, with the same reduction as `printable_field`: only
    // PRINTUSASCII survives (a non-ASCII char has no byte in that range), up to MAX bytes.
    let mut put = |b: u8| {
        if (33..=126).contains(&b) && out.len() - start < MAX {
            out.push(b);
        }
    };
    put(b'[');
    if let Some(st) = source_type {
        for c in st.chars() {
            if c.is_whitespace() {
                put(b'-');
            } else if c.is_ascii() {
                put(c.to_ascii_uppercase() as u8);
            }
        }
        put(b'/');
    }
    instance.bytes().for_each(&mut put);
    put(b']');
}

/// Writes `s` reduced to PRINTUSASCII (33..=126) and cut to `max`, or `-` if nothing is left.
fn printable_field(out: &mut Vec<u8>, s: &str, max: usize) {
    let before = out.len();
    out.extend(s.bytes().filter(|b| (33..=126).contains(b)).take(max));
    if out.len() == before {
        out.push(b'-');
    }
}

/// Writes `org.space.app` from the tags, each part sanitised as CF does (at most 3 × 63 + 2
/// bytes, within HOSTNAME's 255); `fallback` reduced to PRINTUSASCII otherwise.
fn hostname(out: &mut Vec<u8>, view: &EnvelopeView<'_>, fallback: &str) {
    let org = view.tag("organization_name");
    let space = view.tag("space_name");
    let app = view.tag("app_name");
    if org.is_none() && space.is_none() && app.is_none() {
        printable_field(out, fallback, 255);
        return;
    }
    for (i, part) in [org, space, app].into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        host_part(out, part.unwrap_or(""));
    }
}

/// Whitespace to `-`, only ASCII letters, digits and `-` kept, trailing `-` trimmed, then
/// cut to 63 bytes (in that order, as CF does).
fn host_part(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    for c in s.chars() {
        if c.is_whitespace() {
            out.push(b'-');
        } else if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c as u8);
        }
    }
    while out.len() > start && out.last() == Some(&b'-') {
        out.pop();
    }
    out.truncate(start + 63.min(out.len() - start));
}

/// `v` in decimal, written at the end of `buf`; returns the digits.
fn decimal(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// [`decimal`] as text (the digits are ASCII).
fn decimal_str(buf: &mut [u8; 20], v: u64) -> &str {
    std::str::from_utf8(decimal(buf, v)).unwrap_or("0")
}

/// `v` as exactly `width` decimal digits, zero-padded (callers keep it in range).
fn padded(out: &mut Vec<u8>, v: i64, width: usize) {
    let mut buf = [0u8; 20];
    let digits = decimal(&mut buf, v.unsigned_abs());
    for _ in digits.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

fn sd_open(out: &mut Vec<u8>, id: &str) {
    out.push(b'[');
    out.extend_from_slice(id.as_bytes());
    out.push(b'@');
    out.extend_from_slice(ENTERPRISE.as_bytes());
}

/// `[tags@47450 k="v" ...]`; when `dash_if_empty`, `-` stands in for no tags (logs need an
/// SD field; metrics already have one).
fn tags_sd(out: &mut Vec<u8>, tags: &[(&str, &str)], dash_if_empty: bool) {
    let before = out.len();
    sd_open(out, "tags");
    let opened = out.len();
    for (k, v) in tags {
        param(out, k, v);
    }
    if out.len() == opened {
        out.truncate(before);
        if dash_if_empty {
            out.push(b'-');
        }
    } else {
        out.push(b']');
    }
}

/// ` name="value"`, with the name reduced to SD-NAME (PRINTUSASCII except `= ] "` and
/// space, at most 32) and the value escaped; a name with nothing left is skipped.
fn param(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean = name
        .bytes()
        .filter(|b| (33..=126).contains(b) && !matches!(b, b'=' | b']' | b'"'))
        .take(32);
    let before = out.len();
    out.push(b' ');
    out.extend(clean);
    if out.len() == before + 1 {
        out.truncate(before);
        return;
    }
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        match b {
            0 => continue,
            b'\\' | b'"' | b']' => out.push(b'\\'),
            _ => {}
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Go's `2006-01-02T15:04:05.999999-07:00` in UTC: microseconds with trailing zeros trimmed
/// (no fraction at all when zero) and `+00:00`, never `Z`.
fn timestamp(out: &mut Vec<u8>, nanos: i64) {
    let c = hydrant_envelope::time::Civil::utc(nanos);
    let micros = i64::from(c.nanosecond / 1_000);
    // i64 nanoseconds span the years 1677..=2262, so four digits always fit.
    padded(out, i64::from(c.year), 4);
    out.push(b'-');
    padded(out, i64::from(c.month), 2);
    out.push(b'-');
    padded(out, i64::from(c.day), 2);
    out.push(b'T');
    padded(out, i64::from(c.hour), 2);
    out.push(b':');
    padded(out, i64::from(c.minute), 2);
    out.push(b':');
    padded(out, i64::from(c.second), 2);
    if micros > 0 {
        out.push(b'.');
        padded(out, micros, 6);
        // micros > 0, so a non-zero digit stops the trim before the dot.
        while out.last() == Some(&b'0') {
            out.pop();
        }
    }
    out.extend_from_slice(b"+00:00");
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)`, which CF uses for gauge values: the shortest
/// digits that round-trip, in exponent form (`1e+06`, `1.5e-07`) when the decimal exponent is
/// below -4 or at least 6 (strconv's rule for the shortest precision).
fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e3", "-5e-7", "0e0".
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use hydrant_envelope::v2;
    use hydrant_envelope::wire::{EnvelopeView, encode as encode_envelope};
    use hydrant_testkit::envelopes::{counter, envelope, gauge, timer};

    use super::{DrainData, EncoderOptions, encode, encode_messages, go_float};

    fn lines(e: &v2::Envelope, opts: &EncoderOptions) -> Vec<String> {
        let bytes = encode_envelope(e);
        let view = EnvelopeView::parse(&bytes).unwrap();
        encode_messages(&view, opts)
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect()
    }

    fn opts(drain_data: DrainData) -> EncoderOptions {
        EncoderOptions {
            hostname: "test-hostname".to_owned(),
            metadata: true,
            drain_data,
        }
    }

    fn log(err: bool, tags: &[(&str, &str)]) -> v2::Envelope {
        let line = v2::envelope::Message::Log(v2::Log {
            payload: b"just a test".to_vec().into(),
            r#type: i32::from(err),
        });
        envelope(12_345_000, "test-app-id", "2", tags, line)
    }

    // The expected lines are Cloud Foundry's own (`rfc5424_test.go`, consumers.md §2.2).
    #[test]
    fn golden_log_lines_match_cloud_foundry() {
        assert_eq!(
            lines(
                &log(false, &[("source_type", "MY TASK")]),
                &opts(DrainData::Logs)
            ),
            [
                "<14>1 1970-01-01T00:00:00.012345+00:00 test-hostname test-app-id [MY-TASK/2] - \
              [tags@47450 source_type=\"MY TASK\"] just a test\n"
            ]
        );
        let tagged = log(
            true,
            &[
                ("source_type", "MY TASK"),
                ("organization_name", "some-org"),
                ("space_name", "some-space"),
                ("app_name", "some-app"),
            ],
        );
        assert_eq!(
            lines(&tagged, &opts(DrainData::Logs)),
            [
                "<11>1 1970-01-01T00:00:00.012345+00:00 some-org.some-space.some-app test-app-id \
              [MY-TASK/2] - [tags@47450 app_name=\"some-app\" organization_name=\"some-org\" \
              source_type=\"MY TASK\" space_name=\"some-space\"] just a test\n"
            ]
        );
        let no_meta = EncoderOptions {
            metadata: false,
            ..opts(DrainData::Logs)
        };
        assert_eq!(
            lines(&log(true, &[("source_type", "MY TASK")]), &no_meta),
            [
                "<11>1 1970-01-01T00:00:00.012345+00:00 test-hostname test-app-id [MY-TASK/2] - \
              - just a test\n"
            ]
        );
    }

    #[test]
    fn hostname_parts_are_sanitised_like_cloud_foundry() {
        let e = log(
            false,
            &[
                ("organization_name", "some_org"),
                ("space_name", "some space"),
                ("app_name", "some_app--"),
            ],
        );
        let l = &lines(&e, &opts(DrainData::Logs))[0];
        assert!(
            l.contains(" someorg.some-space.someapp test-app-id "),
            "{l}"
        );
    }

    #[test]
    fn golden_metric_lines_match_cloud_foundry() {
        let metric = |tags: &[(&str, &str)], message| {
            envelope(12_345_000, "test-app-id", "1", tags, message)
        };
        let head = "<14>1 1970-01-01T00:00:00.012345+00:00 test-hostname test-app-id [1] - ";
        let gauge = metric(
            &[],
            gauge(&[
                ("cpu", 0.23, "percentage"),
                ("memory_quota", 8000.0, "bytes"),
            ]),
        );
        let mut got = lines(&gauge, &opts(DrainData::Metrics));
        got.sort();
        assert_eq!(
            got,
            [
                format!("{head}[gauge@47450 name=\"cpu\" value=\"0.23\" unit=\"percentage\"] \n"),
                format!(
                    "{head}[gauge@47450 name=\"memory_quota\" value=\"8000\" unit=\"bytes\"] \n"
                ),
            ]
        );
        let counter = metric(&[("metric-tag", "scallop")], counter("some-counter", 1, 99));
        assert_eq!(
            lines(&counter, &opts(DrainData::Metrics)),
            [format!(
                "{head}[counter@47450 name=\"some-counter\" total=\"99\" delta=\"1\"]\
                 [tags@47450 metric-tag=\"scallop\"] \n"
            )]
        );
        let timer = metric(&[], timer("http", 10, 20));
        assert_eq!(
            lines(&timer, &opts(DrainData::Traces)),
            [format!(
                "{head}[timer@47450 name=\"http\" start=\"10\" stop=\"20\"] \n"
            )]
        );
        assert!(
            lines(&timer, &opts(DrainData::Logs)).is_empty(),
            "filtered out"
        );
        let event = metric(
            &[],
            v2::envelope::Message::Event(v2::Event {
                title: "event-title".to_owned(),
                body: "event-body".to_owned(),
            }),
        );
        assert_eq!(
            lines(&event, &opts(DrainData::Logs)),
            [format!(
                "{head}[event@47450 title=\"event-title\" body=\"event-body\"] \n"
            )]
        );
    }

    #[test]
    fn escapes_values_strips_nul_and_frames_exactly() {
        let mut e = log(
            false,
            &[("source_type", "APP/PROC/WEB"), ("q", "a\"b]c\\d")],
        );
        e.timestamp = 1_700_000_000_000_000_000;
        if let Some(v2::envelope::Message::Log(l)) = &mut e.message {
            l.payload = b"line one\n<14>1 fake header\0 end".to_vec().into();
        }
        let bytes = encode_envelope(&e);
        let view = EnvelopeView::parse(&bytes).unwrap();
        let mut out = Vec::new();
        assert_eq!(encode(&view, &opts(DrainData::Logs), &mut out), 1);
        let text = String::from_utf8(out).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<14>1 2023-11-14T22:13:20+00:00 test-hostname test-app-id [APP/PROC/WEB/2] - \
             [tags@47450 q=\"a\\\"b\\]c\\\\d\" source_type=\"APP/PROC/WEB\"] \
             line one\n<14>1 fake header end\n"
        );
    }

    #[test]
    fn floats_format_like_go() {
        for (v, want) in [
            (0.23, "0.23"),
            (8000.0, "8000"),
            (0.0, "0"),
            (-1.5, "-1.5"),
            (123_456.7, "123456.7"),
            (1e6, "1e+06"),
            (1_234_567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e100, "1e+100"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }
}

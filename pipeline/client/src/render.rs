//! Terminal and JSON renderings of envelopes, shared by `hydrant logs` and the console.
//!
//! Log lines match `cf logs` byte for byte (by default):
//! `   2024-10-03T07:53:50.57+0000 [APP/PROC/WEB/0] OUT message` — a 3-space indent, the
//! envelope time truncated to centiseconds with a numeric offset, `[source_type/instance_id]`,
//! `OUT`/`ERR`, the payload without its trailing newline. A payload holding several lines is
//! printed as several lines, each with the full header (as cf v7+ does), so a line can never
//! pass itself off as another source's. With `color`, ERR lines are red, like cf.
//!
//! Invariant (invariant 6 of the architecture): untrusted bytes never reach the terminal raw.
//! Every C0 control (ESC as `\e`, tab `\t`, CR `\r`, LF `\n`, the rest `\xNN`), DEL, every C1
//! control (`\u{9b}`), the bidi and line-separator format characters (U+061C, U+200E/F,
//! U+2028–U+202E, U+2066–U+2069) and every byte of invalid UTF-8 (`\xNN`) is written as a
//! visible escape. Backslashes are left alone: logs are full of them, and an ambiguous `\e` is
//! cosmetic while a real ESC is not. With `color`, the only ESC bytes in the output are this
//! module's own SGR sequences, right after the indent and right before the newline.

use std::fmt::Write as _;

use hydrant_envelope::gap::{GAP_SOURCE, Gap};
use hydrant_envelope::time::Civil;
use hydrant_envelope::v2;
use hydrant_envelope::wire::{EnvelopeView, Fields, Kind, Value};
use prost::Message as _;

use crate::{Batch, Error, StreamEvent};

/// SGR red, for ERR lines.
pub const RED: &str = "\x1b[31m";
/// SGR yellow, for loss markers.
pub const YELLOW: &str = "\x1b[33m";
/// SGR reset.
pub const RESET: &str = "\x1b[0m";

/// Which offset timestamps are shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeZone {
    /// The machine's zone (`TZ`, else `/etc/localtime`), per timestamp so DST is right; what
    /// `cf logs` shows.
    #[default]
    Local,
    /// `+0000`.
    Utc,
    /// A fixed offset, seconds east of UTC.
    Fixed(i32),
}

/// How to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// ANSI colour (pass whether stdout is a terminal). Default off.
    pub color: bool,
    /// Timestamp zone. Default local.
    pub tz: TimeZone,
}

/// Appends the line(s) for one envelope, each ending in `\n`.
pub fn render(view: &EnvelopeView<'_>, opts: &RenderOptions, out: &mut String) {
    match view.kind {
        Kind::Log => render_log(view, opts, out),
        _ => {
            out.push_str("   ");
            push_header(view, opts.tz, out);
            render_metric_body(view, out);
            out.push('\n');
        }
    }
}

/// Appends the lines of every envelope of a batch.
pub fn render_batch(batch: &Batch, opts: &RenderOptions, out: &mut String) {
    for view in batch.iter() {
        render(&view, opts, out);
    }
}

/// Appends the visible marker line for a loss, stamped `timestamp` (UNIX ns; pass
/// `hydrant_envelope::now_nanos()` for "when we noticed"):
/// `   <ts> [HYDRANT] LOST 1234 envelopes (slow_consumer at firehose)`, followed, when the
/// marker says whose they were, by `: web 1200, worker 30, other 4`.
pub fn render_gap(gap: &Gap, timestamp: i64, opts: &RenderOptions, out: &mut String) {
    out.push_str("   ");
    if opts.color {
        out.push_str(YELLOW);
    }
    format_timestamp(timestamp, opts.tz, out);
    let _ = write!(out, " [HYDRANT] LOST {} envelopes", gap.dropped);
    if gap.source_id != GAP_SOURCE && !gap.source_id.is_empty() {
        out.push_str(" from ");
        escape_into(gap.source_id.as_bytes(), out);
    }
    out.push_str(" (");
    escape_into(gap.reason.as_bytes(), out);
    out.push_str(" at ");
    escape_into(gap.hop.as_bytes(), out);
    out.push(')');
    if !gap.by_source.is_empty() {
        let mut sep = ": ";
        for (source, n) in &gap.by_source.top {
            out.push_str(sep);
            escape_into(source.as_bytes(), out);
            let _ = write!(out, " {n}");
            sep = ", ";
        }
        if gap.by_source.other > 0 {
            let _ = write!(out, "{sep}other {}", gap.by_source.other);
        }
    }
    if opts.color {
        out.push_str(RESET);
    }
    out.push('\n');
}

/// Appends the marker line for a loss on one app's stream, in the app's terms (what
/// `hydrant logs APP` prints): `   <ts> [HYDRANT] LOST 120 of your lines (beyond the replay
/// window)`. Every envelope such a stream carries is the app's, so the count is the app's; what
/// the pipeline could not attribute to a source (`other`) is said apart as "up to N more".
pub fn render_app_gap(gap: &Gap, timestamp: i64, opts: &RenderOptions, out: &mut String) {
    out.push_str("   ");
    if opts.color {
        out.push_str(YELLOW);
    }
    format_timestamp(timestamp, opts.tz, out);
    let unsure = gap.by_source.other.min(gap.dropped);
    let yours = gap.dropped - unsure;
    let noun = if yours == 1 { "line" } else { "lines" };
    let _ = write!(out, " [HYDRANT] LOST {yours} of your {noun} (");
    match (gap.reason.as_str(), gap.hop.as_str()) {
        ("replay_window", _) => out.push_str("beyond the replay window"),
        ("doppler_restarted", _) => out.push_str("a doppler restarted"),
        ("replay_unavailable", _) => out.push_str("a doppler could not be read"),
        ("slow_consumer", "firehose") => out.push_str("this stream fell behind"),
        ("sequence_gap", _) => out.push_str("missing from the sequence"),
        (reason, hop) => {
            escape_into(reason.as_bytes(), out);
            out.push_str(" at ");
            escape_into(hop.as_bytes(), out);
        }
    }
    if unsure > 0 {
        let _ = write!(out, "; up to {unsure} more could not be attributed");
    }
    out.push(')');
    if opts.color {
        out.push_str(RESET);
    }
    out.push('\n');
}

/// Appends what a data event shows (batches and gaps; a gap is stamped now). Returns false for
/// events that carry no data (connection changes), which callers report their own way.
pub fn render_event(event: &StreamEvent, opts: &RenderOptions, out: &mut String) -> bool {
    match event {
        StreamEvent::Batch(batch) => render_batch(batch, opts, out),
        StreamEvent::Gap(gap) => render_gap(gap, hydrant_envelope::now_nanos(), opts, out),
        _ => return false,
    }
    true
}

/// Appends one envelope as one line of protojson (the shape of `hydrant_envelope::json`),
/// ending in `\n`. DEL, C1 and bidi characters inside strings are written as `\uXXXX` escapes
/// (serde_json already escapes C0), so the line is safe on a terminal and still valid JSON.
///
/// # Errors
/// [`Error::Decode`] if prost rejects the envelope.
pub fn render_json(view: &EnvelopeView<'_>, out: &mut String) -> Result<(), Error> {
    let envelope = v2::Envelope::decode(view.bytes()).map_err(|e| Error::Decode(e.to_string()))?;
    push_json(&envelope, out);
    Ok(())
}

/// Appends a gap as one line of protojson: the marker envelope the pipeline uses, stamped now.
pub fn render_gap_json(gap: &Gap, out: &mut String) {
    push_json(&gap.to_envelope(), out);
}

fn push_json(envelope: &v2::Envelope, out: &mut String) {
    let text = hydrant_envelope::json::envelope(envelope).to_string();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if is_unsafe(c) {
            out.push_str(&text[start..i]);
            let _ = write!(out, "\\u{:04x}", c as u32);
            start = i + c.len_utf8();
        }
    }
    out.push_str(&text[start..]);
    out.push('\n');
}

fn render_log(view: &EnvelopeView<'_>, opts: &RenderOptions, out: &mut String) {
    let (payload, err) = view.log().unwrap_or_default();
    let red = opts.color && err;
    let end = payload
        .iter()
        .rposition(|b| *b != b'\n' && *b != b'\r')
        .map_or(0, |i| i + 1);
    let mut header: Option<String> = None;
    for (i, line) in payload[..end].split(|b| *b == b'\n').enumerate() {
        out.push_str("   ");
        if red {
            out.push_str(RED);
        }
        if i == 0 {
            let start = out.len();
            push_header(view, opts.tz, out);
            out.push_str(if err { "ERR " } else { "OUT " });
            if end > line.len() {
                header = Some(out[start..].to_owned());
            }
        } else if let Some(h) = &header {
            out.push_str(h);
        }
        escape_into(line.strip_suffix(b"\r").unwrap_or(line), out);
        if red {
            out.push_str(RESET);
        }
        out.push('\n');
    }
}

/// `<timestamp> [<source_type>/<instance>] `.
fn push_header(view: &EnvelopeView<'_>, tz: TimeZone, out: &mut String) {
    format_timestamp(view.timestamp, tz, out);
    out.push_str(" [");
    // Platform components' metrics often carry no source_type; their source_id names them.
    let source_type = view
        .tag("source_type")
        .filter(|s| !s.is_empty())
        .unwrap_or(view.source_id);
    escape_into(source_type.as_bytes(), out);
    let instance = if view.instance_id.is_empty() {
        view.tag("instance_id").unwrap_or_default()
    } else {
        view.instance_id
    };
    if !instance.is_empty() {
        out.push('/');
        escape_into(instance.as_bytes(), out);
    }
    out.push_str("] ");
}

fn render_metric_body(view: &EnvelopeView<'_>, out: &mut String) {
    match view.kind {
        Kind::Counter => {
            let (mut delta, mut total) = (0u64, 0u64);
            for (n, v) in Fields::new(view.body()).flatten() {
                match (n, v) {
                    (2, Value::Varint(d)) => delta = d,
                    (3, Value::Varint(t)) => total = t,
                    _ => {}
                }
            }
            out.push_str("COUNTER ");
            escape_into(view.counter_name().unwrap_or_default().as_bytes(), out);
            let _ = write!(out, " delta={delta} total={total}");
        }
        Kind::Gauge => {
            out.push_str("GAUGE");
            for (i, (name, value, unit)) in view.gauge_values().enumerate() {
                out.push_str(if i == 0 { " " } else { ", " });
                escape_into(name.as_bytes(), out);
                let _ = write!(out, "={value}");
                if !unit.is_empty() {
                    out.push(' ');
                    escape_into(unit.as_bytes(), out);
                }
            }
        }
        Kind::Timer => {
            let (start, stop) = view.timer_span().unwrap_or_default();
            out.push_str("TIMER ");
            escape_into(view.timer_name().unwrap_or_default().as_bytes(), out);
            let ms = stop.saturating_sub(start) as f64 / 1e6;
            let _ = write!(out, " {ms:.3}ms");
        }
        Kind::Event => {
            let (title, body) = view.event().unwrap_or_default();
            out.push_str("EVENT ");
            escape_into(title.as_bytes(), out);
            if !body.is_empty() {
                out.push_str(": ");
                escape_into(body.as_bytes(), out);
            }
        }
        Kind::Log | Kind::None => out.push_str("ENVELOPE (no message)"),
    }
}

/// Characters that must not reach a terminal as themselves.
fn is_unsafe(c: char) -> bool {
    matches!(
        c,
        '\0'..='\x1f'
            | '\x7f'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

fn push_escape(c: char, out: &mut String) {
    let _ = match c {
        '\t' => write!(out, "\\t"),
        '\n' => write!(out, "\\n"),
        '\r' => write!(out, "\\r"),
        '\x1b' => write!(out, "\\e"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    };
}

/// Appends `bytes` with every unsafe character or invalid UTF-8 byte escaped (see the module
/// docs for the exact set and spelling).
pub fn escape_into(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, c) in valid.char_indices() {
            if is_unsafe(c) {
                out.push_str(&valid[start..i]);
                push_escape(c, out);
                start = i + c.len_utf8();
            }
        }
        out.push_str(&valid[start..]);
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// `text` made safe for a terminal (for server-supplied reasons and error bodies).
#[must_use]
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(text.as_bytes(), &mut out);
    out
}

/// Appends `ns` (UNIX ns) as `2006-01-02T15:04:05.00-0700`: centiseconds, truncated like Go.
pub fn format_timestamp(ns: i64, tz: TimeZone, out: &mut String) {
    let c = match tz {
        TimeZone::Utc => Civil::utc(ns),
        TimeZone::Fixed(offset) => Civil::at_offset(ns, offset),
        TimeZone::Local => Civil::local(ns),
    };
    let sign = if c.offset_seconds < 0 { '-' } else { '+' };
    let offset_minutes = c.offset_seconds.unsigned_abs() / 60;
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:02}{sign}{:02}{:02}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanosecond / 10_000_000,
        offset_minutes / 60,
        offset_minutes % 60,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ns: i64, tz: TimeZone) -> String {
        let mut s = String::new();
        format_timestamp(ns, tz, &mut s);
        s
    }

    #[test]
    fn timestamps_truncate_to_centiseconds() {
        // 2024-10-03T07:53:50.579Z
        let ns = 1_727_942_030_579_999_999;
        assert_eq!(ts(ns, TimeZone::Utc), "2024-10-03T07:53:50.57+0000");
        assert_eq!(
            ts(ns, TimeZone::Fixed(2 * 3600)),
            "2024-10-03T09:53:50.57+0200"
        );
        assert_eq!(
            ts(ns, TimeZone::Fixed(-(9 * 3600 + 30 * 60))),
            "2024-10-02T22:23:50.57-0930"
        );
        assert_eq!(ts(0, TimeZone::Utc), "1970-01-01T00:00:00.00+0000");
        assert_eq!(ts(-1, TimeZone::Utc), "1969-12-31T23:59:59.99+0000");
        assert_eq!(
            ts(951_782_400_000_000_000, TimeZone::Utc),
            "2000-02-29T00:00:00.00+0000"
        );
        // Extremes render without panicking.
        ts(i64::MIN, TimeZone::Fixed(-86_399));
        ts(i64::MAX, TimeZone::Fixed(86_399));
        ts(i64::MAX, TimeZone::Local);
    }

    #[test]
    fn escapes() {
        assert_eq!(escape_text("plain ünïcode ✓"), "plain ünïcode ✓");
        assert_eq!(escape_text("a\x1b[2Jb"), "a\\e[2Jb");
        assert_eq!(escape_text("\t\r\n\x07\x7f"), "\\t\\r\\n\\x07\\x7f");
        assert_eq!(escape_text("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape_text("evil\u{202e}txt"), "evil\\u{202e}txt");
        let mut s = String::new();
        escape_into(b"ok\xff\xc3", &mut s);
        assert_eq!(s, "ok\\xff\\xc3");
    }

    #[test]
    fn json_escapes_what_serde_leaves() {
        let e = v2::Envelope {
            source_id: "s\u{7f}\u{9b}\u{202e}".into(),
            ..v2::Envelope::default()
        };
        let mut out = String::new();
        push_json(&e, &mut out);
        assert!(
            out.contains(r#""source_id":"s\u007f\u009b\u202e""#),
            "{out}"
        );
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["source_id"], "s\u{7f}\u{9b}\u{202e}");
    }
}

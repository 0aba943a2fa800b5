//! Short renderings of numbers for narrow table cells, and the one escape every piece of
//! outside text goes through before it reaches a cell.
//!
//! Invariant: every function here returns text without a control character, so a cell can
//! never carry a byte that moves the cursor or changes the terminal's state; a missing value is
//! always `-`, never `0`, so "no data" does not read as "idle".

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use hydrant_firehose_client::render::escape_into;

/// What a cell shows when there is no value.
pub const NONE: &str = "-";

/// `text` with every control character, escape sequence introducer, bidi override and invalid
/// byte written as a visible escape (`\e`, `\x07`, `\u{202e}`); borrowed when already clean.
#[must_use]
pub fn clean(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_safe) {
        Cow::Borrowed(text)
    } else {
        let mut out = String::with_capacity(text.len() + 8);
        escape_into(text.as_bytes(), &mut out);
        Cow::Owned(out)
    }
}

/// `bytes` (a log payload: any bytes at all) as clean text.
#[must_use]
pub fn clean_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    escape_into(bytes, &mut out);
    out
}

/// True for characters a terminal shows as themselves (the complement of what the firehose
/// client's renderer escapes).
fn is_safe(c: char) -> bool {
    !matches!(
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

/// A rate or count in at most ~5 characters: `0`, `9.5`, `123`, `12.3k`, `4.5M`.
#[must_use]
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return NONE.to_owned();
    }
    let a = v.abs();
    let mut s = String::new();
    let _ = if a == 0.0 {
        write!(s, "0")
    } else if a < 10_000.0 && v.fract() == 0.0 {
        write!(s, "{v:.0}")
    } else if a < 10.0 {
        write!(s, "{v:.1}")
    } else if a < 1_000.0 {
        write!(s, "{v:.0}")
    } else if a < 10_000.0 {
        write!(s, "{:.1}k", v / 1e3)
    } else if a < 1_000_000.0 {
        write!(s, "{:.0}k", v / 1e3)
    } else if a < 1e9 {
        write!(s, "{:.1}M", v / 1e6)
    } else {
        write!(s, "{:.1}G", v / 1e9)
    };
    s
}

/// An optional rate or count.
#[must_use]
pub fn opt_number(v: Option<f64>) -> String {
    v.map_or_else(|| NONE.to_owned(), number)
}

/// A whole count: `0`, `999`, `12.3k`.
#[must_use]
pub fn count(n: u64) -> String {
    number(n as f64)
}

/// Bytes in binary units: `512B`, `64M`, `1.5G`.
#[must_use]
pub fn bytes(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        return NONE.to_owned();
    }
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = v;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 && unit > 0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// A latency: `850µs`, `12ms`, `1.2s`.
#[must_use]
pub fn latency(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 10_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us < 1_000_000 {
        format!("{}ms", us / 1_000)
    } else {
        format!("{:.1}s", us as f64 / 1e6)
    }
}

/// An optional latency.
#[must_use]
pub fn opt_latency(d: Option<Duration>) -> String {
    d.map_or_else(|| NONE.to_owned(), latency)
}

/// A percentage with one decimal under 10: `3.5`, `42`.
#[must_use]
pub fn percent(v: f64) -> String {
    if !v.is_finite() {
        NONE.to_owned()
    } else if v.abs() < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// An age: `5s`, `3m`, `2h`, `4d`.
#[must_use]
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3_600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3_600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// UNIX ns as `HH:MM:SS` (UTC offset applied by the caller's `offset_secs`).
#[must_use]
pub fn clock(ns: i64, offset_secs: i32) -> String {
    let secs = ns.div_euclid(1_000_000_000) + i64::from(offset_secs);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3_600, day % 3_600 / 60, day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fit_narrow_cells() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(9.54), "9.5");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(1234.0), "1234");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12_345.0), "12k");
        assert_eq!(number(1_234.5), "1.2k");
        assert_eq!(number(4_500_000.0), "4.5M");
        assert_eq!(number(f64::NAN), "-");
        assert_eq!(bytes(64.0 * 1024.0 * 1024.0), "64M");
        assert_eq!(bytes(1.5 * 1024.0 * 1024.0 * 1024.0), "1.5G");
        assert_eq!(latency(Duration::from_micros(850)), "850µs");
        assert_eq!(latency(Duration::from_micros(12_400)), "12ms");
        assert_eq!(latency(Duration::from_millis(1_200)), "1.2s");
        assert_eq!(age(Duration::from_secs(125)), "2m");
        assert_eq!(clock(3_723_000_000_000, 0), "01:02:03");
    }

    #[test]
    fn clean_escapes_what_a_terminal_would_obey() {
        assert_eq!(clean("plain"), Cow::Borrowed("plain"));
        assert_eq!(clean("a\x1b[2Jb"), "a\\e[2Jb");
        assert_eq!(clean("bell\x07"), "bell\\x07");
        assert_eq!(clean("rtl\u{202e}x"), "rtl\\u{202e}x");
        assert_eq!(clean_bytes(b"bad \xff byte"), "bad \\xff byte");
    }
}

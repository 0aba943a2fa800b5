//! Envelope timestamps (UNIX nanoseconds) as calendar time: the one place the platform turns
//! them into dates, on `jiff`.
//!
//! Where it sits: the contract layer, so every hop that prints a timestamp (the router's access
//! log, syslog drains, `hydrant logs`, the console) uses the same calendar arithmetic and the
//! same zone database instead of its own copy of a days-from-civil algorithm.
//!
//! Invariant: total over every `i64` timestamp and every offset; nothing here panics or fails.
//! An `i64` of nanoseconds spans the years 1677 to 2262, well inside what `jiff` represents.

use std::cell::Cell;

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};

/// A timestamp broken down into calendar fields at some UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// The year, four digits for every `i64` timestamp.
    pub year: i16,
    /// 1 to 12.
    pub month: i8,
    /// 1 to 31.
    pub day: i8,
    /// 0 to 23.
    pub hour: i8,
    /// 0 to 59.
    pub minute: i8,
    /// 0 to 59.
    pub second: i8,
    /// Nanoseconds within the second, 0 to 999 999 999.
    pub nanosecond: i32,
    /// The offset these fields are at, seconds east of UTC.
    pub offset_seconds: i32,
}

impl Civil {
    /// `unix_ns` at `offset_seconds` east of UTC (clamped to the ±25:59:59 any zone can have).
    #[must_use]
    pub fn at_offset(unix_ns: i64, offset_seconds: i32) -> Self {
        let offset_seconds = offset_seconds.clamp(-93_599, 93_599);
        let offset = Offset::from_seconds(offset_seconds).unwrap_or(Offset::UTC);
        let ts = Timestamp::from_nanosecond(i128::from(unix_ns)).unwrap_or(Timestamp::UNIX_EPOCH);
        let dt = offset.to_datetime(ts);
        Self {
            year: dt.year(),
            month: dt.month(),
            day: dt.day(),
            hour: dt.hour(),
            minute: dt.minute(),
            second: dt.second(),
            nanosecond: dt.subsec_nanosecond(),
            offset_seconds,
        }
    }

    /// `unix_ns` in UTC.
    #[must_use]
    pub fn utc(unix_ns: i64) -> Self {
        Self::at_offset(unix_ns, 0)
    }

    /// `unix_ns` in this machine's time zone (`TZ`, else the system's zone, else UTC).
    #[must_use]
    pub fn local(unix_ns: i64) -> Self {
        Self::at_offset(
            unix_ns,
            local_offset_seconds(unix_ns.div_euclid(1_000_000_000)),
        )
    }
}

/// This machine's UTC offset at `unix_secs`, seconds east of UTC. Cached per minute and thread
/// (zone rules change on minute boundaries), so a burst of lines asks the zone database once.
#[must_use]
pub fn local_offset_seconds(unix_secs: i64) -> i32 {
    thread_local! {
        static ZONE: TimeZone = TimeZone::system();
        static CACHE: Cell<(i64, i32)> = const { Cell::new((i64::MIN, 0)) };
    }
    let minute = unix_secs.div_euclid(60);
    CACHE.with(|cache| {
        let (cached_minute, offset) = cache.get();
        if cached_minute == minute {
            return offset;
        }
        let ts = Timestamp::from_second(unix_secs).unwrap_or(Timestamp::UNIX_EPOCH);
        let offset = ZONE.with(|zone| zone.to_offset(ts).seconds());
        cache.set((minute, offset));
        offset
    })
}

/// Appends `unix_ns` as RFC 3339 in UTC with nanoseconds: `2006-01-02T15:04:05.000000000Z`
/// (gorouter's access-log timestamp).
pub fn push_rfc3339_nanos_utc(out: &mut String, unix_ns: i64) {
    use std::fmt::Write as _;
    let c = Civil::utc(unix_ns);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.nanosecond
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_fields_match_known_instants() {
        let c = Civil::utc(1_727_941_430_570_000_000);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2024, 10, 3, 7, 43, 50)
        );
        assert_eq!(c.nanosecond, 570_000_000);
        let leap = Civil::utc(951_782_400_000_000_000);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let before = Civil::utc(-1);
        assert_eq!(
            (before.year, before.month, before.day, before.second),
            (1969, 12, 31, 59)
        );
        assert_eq!(before.nanosecond, 999_999_999);
        let east = Civil::at_offset(0, 2 * 3600);
        assert_eq!((east.day, east.hour, east.offset_seconds), (1, 2, 7200));
    }

    #[test]
    fn every_timestamp_and_offset_is_total() {
        for ns in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
            for offset in [i32::MIN, -86_399, 0, 86_399, i32::MAX] {
                let c = Civil::at_offset(ns, offset);
                assert!((1..=12).contains(&c.month) && (1..=31).contains(&c.day));
            }
            let _ = Civil::local(ns);
        }
    }

    #[test]
    fn rfc3339_with_nanoseconds() {
        let mut s = String::new();
        push_rfc3339_nanos_utc(&mut s, 1_727_941_430_000_000_007);
        assert_eq!(s, "2024-10-03T07:43:50.000000007Z");
    }
}

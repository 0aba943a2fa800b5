//! The two fields Hydrant reads out of a certificate without a full X.509 parser: the subject
//! CN (who a peer says it is, for allow-lists and refusal logs) and `notAfter` (for the days to
//! expiry gauge).
//!
//! The invariant: this never panics and never trusts a length it was given; a malformed
//! certificate reads as `None`. It is only ever applied to certificates rustls has parsed and
//! (for identities that are let in) verified, so it does not need to be a validator.

/// `id-at-commonName` (2.5.4.3) as DER OID content bytes.
const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// One DER element: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (bytes, rest) = rest.split_at(octets);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The `tbsCertificate` fields up to and including the subject: `(validity, subject)`.
fn validity_and_subject(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, certificate, _) = element(cert)?;
    let (_, tbs, _) = element(certificate)?;
    let (tag, _, mut rest) = element(tbs)?;
    // The version is an explicit [0]; when absent, the first element was the serial number.
    if tag == 0xa0 {
        (_, _, rest) = element(rest)?;
    }
    let (_, _, rest) = element(rest)?; // signature algorithm
    let (_, _, rest) = element(rest)?; // issuer
    let (_, validity, rest) = element(rest)?;
    let (_, subject, _) = element(rest)?;
    Some((validity, subject))
}

/// The subject's common name, when the certificate has one in a string type.
#[must_use]
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    let (_, mut subject) = validity_and_subject(cert)?;
    while !subject.is_empty() {
        let (_, set, rest) = element(subject)?;
        subject = rest;
        let (_, attribute, _) = element(set)?;
        let (oid_tag, oid, value) = element(attribute)?;
        if oid_tag == 0x06 && oid == COMMON_NAME {
            let (_, name, _) = element(value)?;
            return std::str::from_utf8(name).ok().map(str::to_owned);
        }
    }
    None
}

/// `notAfter` as seconds since the Unix epoch.
#[must_use]
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (validity, _) = validity_and_subject(cert)?;
    let (_, _, rest) = element(validity)?;
    let (tag, time, _) = element(rest)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        // UTCTime: two-digit years, 50..=99 meaning 19xx (RFC 5280 4.1.2.5.1).
        0x17 => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
                digits.get(2..)?,
            )
        }
        0x18 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| rest.get(at..at + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
#[must_use]
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day counted since 1970-01-01 (inverse of [`days_from_civil`]'s year).
#[must_use]
pub fn year_of_day(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_round_trip_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(year_of_day(days_from_civil(2026, 12, 31)), 2026);
        assert_eq!(year_of_day(days_from_civil(2027, 1, 1)), 2027);
    }

    #[test]
    fn garbage_reads_as_nothing() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x02, 0x30],
        ] {
            assert_eq!(subject_cn(input), None);
            assert_eq!(not_after(input), None);
        }
    }
}

//! An X.509 certificate's validity window, read straight from its DER: rustls
//! checks dates only on the client side, and the server should refuse to start
//! with an expired certificate rather than have every client refuse it.
//!
//! Only the path to `tbsCertificate.validity` is walked (RFC 5280, section 4.1):
//! `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
//! serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE
//! { notBefore Time, notAfter Time }, ... }, ... }`.

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xA0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// When a certificate is valid, in seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    /// The first second it is valid.
    pub(crate) not_before: i64,
    /// The last second it is valid.
    pub(crate) not_after: i64,
}

impl Validity {
    /// The window of a DER certificate; `None` if it is not one.
    pub(crate) fn of(der: &[u8]) -> Option<Self> {
        let (cert, _) = element(der, SEQUENCE)?;
        let (tbs, _) = element(cert, SEQUENCE)?;
        let mut rest = tbs;
        if rest.first() == Some(&VERSION) {
            rest = element(rest, VERSION)?.1;
        }
        rest = element(rest, INTEGER)?.1;
        rest = element(rest, SEQUENCE)?.1;
        rest = element(rest, SEQUENCE)?.1;
        let (window, _) = element(rest, SEQUENCE)?;
        let (not_before, rest) = time(window)?;
        let (not_after, _) = time(rest)?;
        Some(Self {
            not_before,
            not_after,
        })
    }
}

/// The content of the element at the start of `input` if its tag is `tag`, and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, input) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, input) = input.split_first()?;
    let (len, input) = if first < 0x80 {
        (usize::from(first), input)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, input) = input.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, input)
    };
    (input.len() >= len).then(|| input.split_at(len))
}

/// A `Time` (UTCTime or GeneralizedTime, both in `Z` form as RFC 5280 requires).
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (year, digits, rest) = if let Some((text, rest)) = element(input, UTC_TIME) {
        let (yy, digits) = (number(text.get(..2)?)?, text.get(2..)?);
        // RFC 5280: YY >= 50 is 19YY, else 20YY.
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, digits, rest)
    } else {
        let (text, rest) = element(input, GENERALIZED_TIME)?;
        (number(text.get(..4)?)?, text.get(4..)?, rest)
    };
    if digits.len() != 11 || digits[10] != b'Z' {
        return None;
    }
    let field = |at: usize| number(&digits[at..at + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400 + hour * 3_600 + minute * 60 + second.min(60),
        rest,
    ))
}

fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time (for messages).
pub(crate) fn format_utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // The inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_both_time_forms() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050 on.
        let window = Validity::of(&cert((1999, 12, 31), (2051, 3, 1))).expect("validity");
        assert_eq!(format_utc(window.not_before), "1999-12-31 00:00:00 UTC");
        assert_eq!(format_utc(window.not_after), "2051-03-01 00:00:00 UTC");
        assert_eq!(window.not_before, 946_598_400);
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert_eq!(Validity::of(b""), None);
        assert_eq!(Validity::of(b"\x30\x05abc"), None);
        let der = cert((2020, 1, 1), (2030, 1, 1));
        assert_eq!(Validity::of(&der[..der.len() / 2]), None);
    }

    #[test]
    fn dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (2100, 3, 1)] {
            let t = days_from_civil(y, m, d) * 86_400 + 3_723;
            assert_eq!(format_utc(t), format!("{y:04}-{m:02}-{d:02} 01:02:03 UTC"));
        }
    }
}

//! Wall-clock timestamps as the wire carries them: RFC 3339, emitted as UTC with milliseconds
//! and `Z` (`2025-12-18T10:30:00.000Z`, what a browser's `Date.toISOString()` produces).
//!
//! The core never reads a clock: adapters pass the wall-clock time in as Unix milliseconds.
//! Formatting and parsing are written here rather than taken from jiff because this code is
//! compiled into the browser client, where jiff would add ~50 KB; the tests check both
//! directions against jiff.

use std::fmt;

/// A point in time with millisecond precision, within the years 0000 to 9999 (UTC).
///
/// Parsing accepts any RFC 3339 timestamp (any UTC offset, 0 to 9 fractional digits, which are
/// truncated to milliseconds); formatting always gives the canonical `YYYY-MM-DDTHH:MM:SS.mmmZ`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_ms: i64,
}

/// 0000-01-01T00:00:00.000Z
const MIN_UNIX_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z
const MAX_UNIX_MS: i64 = 253_402_300_799_999;

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp ({0})")]
pub struct TimestampError(&'static str);

impl Timestamp {
    /// 1970-01-01T00:00:00.000Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp { unix_ms: 0 };

    /// 9999-12-31T23:59:59.999Z, the latest representable time.
    pub const MAX: Timestamp = Timestamp { unix_ms: MAX_UNIX_MS };

    /// The length of the canonical form.
    pub const CANONICAL_LEN: usize = 24;

    /// The timestamp `unix_ms` milliseconds after 1970-01-01T00:00:00Z, if it lies within the
    /// years 0000 to 9999.
    pub fn from_unix_ms(unix_ms: i64) -> Option<Self> {
        (MIN_UNIX_MS..=MAX_UNIX_MS).contains(&unix_ms).then_some(Timestamp { unix_ms })
    }

    /// Milliseconds since 1970-01-01T00:00:00Z (negative before).
    pub fn unix_ms(self) -> i64 {
        self.unix_ms
    }

    /// Parses an RFC 3339 timestamp.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let b = text.as_bytes();
        if b.len() < 20 {
            return Err(TimestampError("too short"));
        }
        let year = digits(b, 0, 4)?;
        expect(b, 4, b'-')?;
        let month = digits(b, 5, 2)?;
        expect(b, 7, b'-')?;
        let day = digits(b, 8, 2)?;
        if !matches!(b[10], b'T' | b't') {
            return Err(TimestampError("expected 'T' between date and time"));
        }
        let hour = digits(b, 11, 2)?;
        expect(b, 13, b':')?;
        let minute = digits(b, 14, 2)?;
        expect(b, 16, b':')?;
        let second = digits(b, 17, 2)?;
        if !(1..=12).contains(&month) {
            return Err(TimestampError("month out of range"));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(TimestampError("day out of range"));
        }
        if hour > 23 || minute > 59 || second > 60 {
            return Err(TimestampError("time of day out of range"));
        }

        let mut pos = 19;
        let mut millis = 0;
        if b[pos] == b'.' {
            let start = pos + 1;
            pos = start;
            while pos < b.len() && b[pos].is_ascii_digit() {
                pos += 1;
            }
            let count = pos - start;
            if count == 0 || count > 9 {
                return Err(TimestampError("fraction must have 1 to 9 digits"));
            }
            for i in 0..3 {
                millis *= 10;
                if i < count {
                    millis += i64::from(b[start + i] - b'0');
                }
            }
        }

        let offset_minutes = match b.get(pos) {
            Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
            Some(&sign @ (b'+' | b'-')) if pos + 6 == b.len() => {
                let hours = digits(b, pos + 1, 2)?;
                expect(b, pos + 3, b':')?;
                let minutes = digits(b, pos + 4, 2)?;
                if hours > 23 || minutes > 59 {
                    return Err(TimestampError("offset out of range"));
                }
                let offset = hours * 60 + minutes;
                if sign == b'+' { offset } else { -offset }
            }
            _ => return Err(TimestampError("expected 'Z' or a UTC offset at the end")),
        };

        // A leap second is clamped to the second before it, as most systems do.
        let second = second.min(59);
        let days = days_from_civil(year, month, day);
        let local_seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
        let unix_ms = (local_seconds - offset_minutes * 60) * 1_000 + millis;
        Timestamp::from_unix_ms(unix_ms).ok_or(TimestampError("outside the years 0000 to 9999"))
    }

    /// Writes the canonical form into `out` and returns it as a string.
    pub fn format(self, out: &mut [u8; Self::CANONICAL_LEN]) -> &str {
        let days = self.unix_ms.div_euclid(86_400_000);
        let ms_of_day = self.unix_ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let fields = [
            (0, year, 4),
            (5, month, 2),
            (8, day, 2),
            (11, ms_of_day / 3_600_000, 2),
            (14, ms_of_day / 60_000 % 60, 2),
            (17, ms_of_day / 1_000 % 60, 2),
            (20, ms_of_day % 1_000, 3),
        ];
        *out = *b"0000-00-00T00:00:00.000Z";
        for (at, mut value, width) in fields {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        // Only ASCII digits and separators were written.
        std::str::from_utf8(out).unwrap_or_default()
    }
}

fn digits(b: &[u8], at: usize, count: usize) -> Result<i64, TimestampError> {
    let field = b.get(at..at + count).ok_or(TimestampError("too short"))?;
    field.iter().try_fold(0i64, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + i64::from(c - b'0'))
        } else {
            Err(TimestampError("expected a digit"))
        }
    })
}

fn expect(b: &[u8], at: usize, want: u8) -> Result<(), TimestampError> {
    match b.get(at) {
        Some(&c) if c == want => Ok(()),
        _ => Err(TimestampError("misplaced separator")),
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.format(&mut [0; Self::CANONICAL_LEN]))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.format(&mut [0; Self::CANONICAL_LEN]))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jiff_format(ms: i64) -> String {
        jiff::Timestamp::from_millisecond(ms)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    }

    #[test]
    fn formats_the_spec_example() {
        let t = Timestamp::parse("2025-12-18T10:30:00.000Z").unwrap();
        assert_eq!(t.to_string(), "2025-12-18T10:30:00.000Z");
        assert_eq!(t.unix_ms(), 1_766_053_800_000);
    }

    #[test]
    fn range_ends_format() {
        assert_eq!(
            Timestamp::from_unix_ms(MIN_UNIX_MS).unwrap().to_string(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_unix_ms(MAX_UNIX_MS).unwrap().to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(Timestamp::from_unix_ms(MIN_UNIX_MS - 1), None);
        assert_eq!(Timestamp::from_unix_ms(MAX_UNIX_MS + 1), None);
    }

    #[test]
    fn accepts_offsets_fractions_and_leap_seconds() {
        let utc = Timestamp::parse("2025-12-18T10:30:00.123Z").unwrap();
        assert_eq!(Timestamp::parse("2025-12-18T11:30:00.123+01:00").unwrap(), utc);
        assert_eq!(Timestamp::parse("2025-12-18T10:30:00.123456789z").unwrap(), utc);
        assert_eq!(Timestamp::parse("2025-12-18t10:30:00.1Z").unwrap().unix_ms() % 1000, 100);
        assert_eq!(Timestamp::parse("2025-12-18T10:30:00Z").unwrap().unix_ms() % 1000, 0);
        assert_eq!(
            Timestamp::parse("2016-12-31T23:59:60Z").unwrap(),
            Timestamp::parse("2016-12-31T23:59:59Z").unwrap()
        );
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "2025-12-18",
            "2025-12-18T10:30:00",
            "2025-12-18 10:30:00Z",
            "2025-13-18T10:30:00Z",
            "2025-02-29T10:30:00Z",
            "2025-12-32T10:30:00Z",
            "2025-12-18T24:00:00Z",
            "2025-12-18T10:60:00Z",
            "2025-12-18T10:30:00.Z",
            "2025-12-18T10:30:00.1234567890Z",
            "2025-12-18T10:30:00+0100",
            "2025-12-18T10:30:00+24:00",
            "2025-12-18T10:30:00Zjunk",
            "+2025-12-18T10:30:00Z",
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
            "２０２５-12-18T10:30:00Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn formatting_matches_jiff(ms in MIN_UNIX_MS..=MAX_UNIX_MS) {
            let ours = Timestamp::from_unix_ms(ms).unwrap().to_string();
            prop_assert_eq!(&ours, &jiff_format(ms));
            prop_assert_eq!(Timestamp::parse(&ours).unwrap().unix_ms(), ms);
        }

        #[test]
        fn parsing_offsets_matches_jiff(ms in 0i64..=MAX_UNIX_MS / 2, offset_min in -1439i64..=1439) {
            let zoned = jiff::Timestamp::from_millisecond(ms)
                .unwrap()
                .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds((offset_min * 60) as i32).unwrap()));
            let text = zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string();
            prop_assert_eq!(Timestamp::parse(&text).unwrap().unix_ms(), ms, "{}", text);
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}") {
            let _ = Timestamp::parse(&text);
        }
    }
}

//! PostgreSQL's text of integers, dates, timestamps and numerics in the
//! canonical style (ISO dates, timestamps in UTC), written without calling the
//! type's output function: capture prints these on nearly every row, and
//! `timestamptz_out` alone took a tenth of a single-row INSERT's capture time
//! (`numeric_out`, with the copy it makes of a short-header value, 0.3 µs a
//! value). Years outside 1 to 9999 are left to PostgreSQL (`push` returns false).

/// A type whose text this module writes, with the Datum's value as `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    Int2,
    Int4,
    Int8,
    /// Days since 2000-01-01.
    Date,
    /// Microseconds since 2000-01-01 00:00:00.
    Timestamp,
    /// Microseconds since 2000-01-01 00:00:00 UTC, printed in UTC.
    TimestampTz,
}

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 0000-03-01 to 2000-01-01 in the proleptic Gregorian calendar.
const DAYS_TO_PG_EPOCH: i64 = 730_425;

impl Native {
    /// Appends the text of `value`, or returns false (and appends nothing)
    /// when PostgreSQL must print it.
    pub fn push(self, out: &mut Vec<u8>, value: i64) -> bool {
        match self {
            Native::Int2 => push_int(out, i64::from(value as i16)),
            Native::Int4 => push_int(out, i64::from(value as i32)),
            Native::Int8 => push_int(out, value),
            Native::Date => match value as i32 {
                i32::MIN => out.extend_from_slice(b"-infinity"),
                i32::MAX => out.extend_from_slice(b"infinity"),
                days => return push_date(out, i64::from(days)),
            },
            Native::Timestamp | Native::TimestampTz => match value {
                i64::MIN => out.extend_from_slice(b"-infinity"),
                i64::MAX => out.extend_from_slice(b"infinity"),
                micros => {
                    if !push_date(out, micros.div_euclid(USECS_PER_DAY)) {
                        return false;
                    }
                    push_time(out, micros.rem_euclid(USECS_PER_DAY));
                    if self == Native::TimestampTz {
                        out.extend_from_slice(b"+00");
                    }
                }
            },
        }
        true
    }
}

fn push_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(decimal(&mut [0; 21], value < 0, value.unsigned_abs()));
}

/// The decimal text of a number (`-` when `negative`) written at the end of
/// `text`, as `to_string` writes it.
pub fn decimal(text: &mut [u8; 21], negative: bool, mut magnitude: u64) -> &[u8] {
    let mut at = text.len();
    loop {
        at -= 1;
        text[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        text[at] = b'-';
    }
    &text[at..]
}

/// Appends `value` zero-padded to `width` digits (`value` < 10^width).
fn push_padded(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for digit in out[start..].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Appends the text of a `numeric` from its stored bytes after the varlena
/// header (PostgreSQL's `NumericShort` or `NumericLong`, native byte order:
/// base-10000 digits, weight, sign and display scale), as `numeric_out`
/// prints it. Returns false, appending nothing, for bytes that are not a numeric.
pub fn push_numeric(out: &mut Vec<u8>, stored: &[u8]) -> bool {
    const SHORT: u16 = 0x8000;
    const SPECIAL: u16 = 0xC000;
    const NEGATIVE: u16 = 0x4000;
    let Some(header) = read_u16(stored, 0) else {
        return false;
    };
    let (negative, weight, dscale, digits_at) = match header & SPECIAL {
        SPECIAL => {
            return match header & 0xF000 {
                0xC000 => push_all(out, b"NaN"),
                0xD000 => push_all(out, b"Infinity"),
                0xF000 => push_all(out, b"-Infinity"),
                _ => false,
            }
        }
        SHORT => {
            let weight = i32::from(header & 0x003F) - if header & 0x0040 != 0 { 64 } else { 0 };
            (
                header & 0x2000 != 0,
                weight,
                usize::from((header & 0x1F80) >> 7),
                2,
            )
        }
        sign => match read_u16(stored, 2) {
            Some(weight) => (
                sign == NEGATIVE,
                i32::from(weight as i16),
                usize::from(header & 0x3FFF),
                4,
            ),
            None => return false,
        },
    };
    let digit_bytes = &stored[digits_at..];
    if !digit_bytes.len().is_multiple_of(2)
        || (0..digit_bytes.len() / 2).any(|i| read_u16(digit_bytes, 2 * i) > Some(9999))
    {
        return false;
    }
    // Digit `i` (from the first stored one) is worth 10000^(weight - i).
    let digit = |i: i32| {
        usize::try_from(i)
            .ok()
            .and_then(|i| read_u16(digit_bytes, 2 * i))
            .unwrap_or(0)
    };
    if negative {
        out.push(b'-');
    }
    if weight < 0 {
        out.push(b'0');
    } else {
        push_int(out, i64::from(digit(0)));
        for i in 1..=weight {
            push_padded(out, u32::from(digit(i)), 4);
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let fraction_at = out.len();
        let mut i = weight + 1;
        while out.len() - fraction_at < dscale {
            push_padded(out, u32::from(digit(i)), 4);
            i += 1;
        }
        out.truncate(fraction_at + dscale);
    }
    true
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
}

fn push_all(out: &mut Vec<u8>, text: &[u8]) -> bool {
    out.extend_from_slice(text);
    true
}

/// `YYYY-MM-DD` of a day counted from 2000-01-01; false outside years 1 to 9999.
fn push_date(out: &mut Vec<u8>, days: i64) -> bool {
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return false;
    }
    push_padded(out, year as u32, 4);
    out.push(b'-');
    push_padded(out, month, 2);
    out.push(b'-');
    push_padded(out, day, 2);
    true
}

/// ` HH:MM:SS` and, when not zero, the fraction without trailing zeros.
fn push_time(out: &mut Vec<u8>, micros: i64) {
    let seconds = (micros / USECS_PER_SEC) as u32;
    out.push(b' ');
    push_padded(out, seconds / 3600, 2);
    out.push(b':');
    push_padded(out, seconds / 60 % 60, 2);
    out.push(b':');
    push_padded(out, seconds % 60, 2);
    let mut fraction = (micros % USECS_PER_SEC) as u32;
    if fraction != 0 {
        let mut width = 6;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            width -= 1;
        }
        out.push(b'.');
        push_padded(out, fraction, width);
    }
}

/// Year, month and day of a day counted from 2000-01-01 (proleptic Gregorian,
/// as PostgreSQL's Julian-day arithmetic), after H. Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + DAYS_TO_PG_EPOCH;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: Native, value: i64) -> Option<String> {
        let mut out = Vec::new();
        kind.push(&mut out, value)
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn integers() {
        assert_eq!(text(Native::Int8, 0).unwrap(), "0");
        assert_eq!(text(Native::Int8, -42).unwrap(), "-42");
        assert_eq!(
            text(Native::Int8, i64::MIN).unwrap(),
            "-9223372036854775808"
        );
        assert_eq!(text(Native::Int8, i64::MAX).unwrap(), "9223372036854775807");
        assert_eq!(
            text(Native::Int4, i64::from(i32::MIN)).unwrap(),
            "-2147483648"
        );
        // Only the type's own bytes of the Datum count.
        assert_eq!(text(Native::Int2, 0x1_0000 - 1).unwrap(), "-1");
        assert_eq!(text(Native::Int2, i64::from(i16::MAX)).unwrap(), "32767");
    }

    #[test]
    fn dates() {
        assert_eq!(text(Native::Date, 0).unwrap(), "2000-01-01");
        assert_eq!(text(Native::Date, -1).unwrap(), "1999-12-31");
        assert_eq!(text(Native::Date, 59).unwrap(), "2000-02-29");
        assert_eq!(text(Native::Date, 9_470).unwrap(), "2025-12-05");
        assert_eq!(text(Native::Date, -730_119).unwrap(), "0001-01-01");
        assert_eq!(text(Native::Date, 2_921_939).unwrap(), "9999-12-31");
        assert_eq!(
            text(Native::Date, -730_120),
            None,
            "1 BC is PostgreSQL's to print"
        );
        assert_eq!(text(Native::Date, 2_921_940), None, "year 10000 too");
        assert_eq!(text(Native::Date, i64::from(i32::MAX)).unwrap(), "infinity");
        assert_eq!(
            text(Native::Date, i64::from(i32::MIN)).unwrap(),
            "-infinity"
        );
    }

    #[test]
    fn timestamps() {
        let at = |days: i64, micros: i64| days * USECS_PER_DAY + micros;
        assert_eq!(
            text(Native::TimestampTz, 0).unwrap(),
            "2000-01-01 00:00:00+00"
        );
        assert_eq!(text(Native::Timestamp, 0).unwrap(), "2000-01-01 00:00:00");
        assert_eq!(
            text(Native::TimestampTz, at(9_470, 45_296_789_000)).unwrap(),
            "2025-12-05 12:34:56.789+00"
        );
        assert_eq!(
            text(Native::Timestamp, at(0, 1)).unwrap(),
            "2000-01-01 00:00:00.000001"
        );
        assert_eq!(
            text(Native::Timestamp, -1).unwrap(),
            "1999-12-31 23:59:59.999999"
        );
        assert_eq!(
            text(Native::Timestamp, at(-730_119, 0)).unwrap(),
            "0001-01-01 00:00:00"
        );
        assert_eq!(text(Native::Timestamp, at(-730_119, 0) - 1), None);
        assert_eq!(text(Native::TimestampTz, i64::MAX).unwrap(), "infinity");
        assert_eq!(text(Native::TimestampTz, i64::MIN).unwrap(), "-infinity");
    }

    /// A numeric's stored bytes: `header` then the optional long-format
    /// weight, then base-10000 digits.
    fn numeric(header: u16, weight: Option<i16>, digits: &[u16]) -> Option<String> {
        let mut stored = header.to_ne_bytes().to_vec();
        if let Some(w) = weight {
            stored.extend_from_slice(&w.to_ne_bytes());
        }
        for d in digits {
            stored.extend_from_slice(&d.to_ne_bytes());
        }
        let mut out = Vec::new();
        push_numeric(&mut out, &stored).then(|| String::from_utf8(out).unwrap())
    }

    /// Short-format header: sign, display scale and weight.
    fn short(negative: bool, dscale: u16, weight: i16) -> u16 {
        0x8000 | if negative { 0x2000 } else { 0 } | (dscale << 7) | (weight as u16 & 0x7F)
    }

    #[test]
    fn numerics_in_the_short_format() {
        assert_eq!(numeric(short(false, 0, 0), None, &[]).unwrap(), "0");
        assert_eq!(numeric(short(false, 2, 0), None, &[]).unwrap(), "0.00");
        assert_eq!(numeric(short(false, 0, 0), None, &[42]).unwrap(), "42");
        assert_eq!(
            numeric(short(true, 2, 0), None, &[12, 3400]).unwrap(),
            "-12.34"
        );
        // 1,000,000.5: digits 100 0000 . 5000, the last stored digit before the point.
        assert_eq!(
            numeric(short(false, 1, 1), None, &[100, 0, 5000]).unwrap(),
            "1000000.5"
        );
        assert_eq!(
            numeric(short(false, 0, 2), None, &[7]).unwrap(),
            "700000000",
            "zeros beyond the stored digits"
        );
        // 0.000012: weight -2, one digit 1200 (units of 10^-8).
        assert_eq!(
            numeric(short(false, 6, -2), None, &[1200]).unwrap(),
            "0.000012"
        );
        assert_eq!(
            numeric(short(false, 5, -1), None, &[1, 2000]).unwrap(),
            "0.00012"
        );
        assert_eq!(
            numeric(short(false, 3, -1), None, &[1234]).unwrap(),
            "0.123",
            "the scale cuts the digits"
        );
        assert_eq!(
            numeric(short(false, 6, 0), None, &[1, 1]).unwrap(),
            "1.000100"
        );
    }

    #[test]
    fn numerics_in_the_long_format_and_special_values() {
        // Long format: sign bits 0x0000 / 0x4000, display scale in the low 14 bits.
        assert_eq!(numeric(0x0002, Some(0), &[3, 1400]).unwrap(), "3.14");
        assert_eq!(
            numeric(0x4000 | 40, Some(-1), &[5000]).unwrap(),
            format!("-0.5{}", "0".repeat(39))
        );
        assert_eq!(
            numeric(0x0000, Some(100), &[1]).unwrap(),
            format!("1{}", "0".repeat(400))
        );
        assert_eq!(numeric(0xC000, None, &[]).unwrap(), "NaN");
        assert_eq!(numeric(0xD000, None, &[]).unwrap(), "Infinity");
        assert_eq!(numeric(0xF000, None, &[]).unwrap(), "-Infinity");
    }

    #[test]
    fn bytes_that_are_not_a_numeric_print_nothing() {
        let mut out = Vec::new();
        assert!(!push_numeric(&mut out, &[]), "no header");
        assert!(!push_numeric(&mut out, &[0x02]), "half a header");
        assert!(
            !push_numeric(&mut out, &0x0002u16.to_ne_bytes()),
            "long format without its weight"
        );
        assert!(!push_numeric(&mut out, &[0x00, 0x80, 0x01]), "half a digit");
        assert!(
            numeric(short(false, 0, 0), None, &[10_000]).is_none(),
            "a digit of 10000"
        );
        assert!(
            numeric(0xE000, None, &[]).is_none(),
            "an unknown special value"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn days_round_trip_through_the_calendar() {
        // Consecutive days give consecutive dates across four centuries.
        let mut previous = civil_from_days(-146_097 - 1);
        for days in -146_097..146_097 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1);
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} then {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }
}

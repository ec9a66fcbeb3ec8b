//! [`Time`]: a `timestamptz` column decoded fast in the text format too.
//!
//! Reads of the read lane come back in PostgreSQL's text format (the simple
//! protocol has no binary results), where sqlx decodes a `timestamptz` with
//! chrono's `parse_from_str`, which interprets its format string again for
//! every value: a third of the CPU that decoding a List page took (three
//! times per row). PostgreSQL prints a `timestamptz` in one shape under the
//! `DateStyle = ISO` that sqlx sets on every connection
//! (`2026-12-01 14:22:03.123456+00`, the offset as `+HH`, `+HH:MM` or
//! `+HH:MM:SS`); [`Time`] reads that shape directly and leaves anything else
//! (years past 9999, BC, `infinity`) and the binary format to sqlx.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type};

/// A `timestamptz`. Rows keep `DateTime<Utc>` fields and decode them
/// through it: `#[sqlx(try_from = "mosaic_db::Time")]` (never NULL) or
/// `#[sqlx(try_from = "mosaic_db::OptTime")]` (nullable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub DateTime<Utc>);

/// A nullable `timestamptz` ([`Time`] or NULL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptTime(pub Option<DateTime<Utc>>);

impl From<Time> for DateTime<Utc> {
    fn from(time: Time) -> Self {
        time.0
    }
}

impl From<OptTime> for Option<DateTime<Utc>> {
    fn from(time: OptTime) -> Self {
        time.0
    }
}

impl Type<Postgres> for Time {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Type<Postgres> for OptTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for Time {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if value.format() == PgValueFormat::Text
            && let Some(time) = parse_iso(value.as_str()?)
        {
            return Ok(Self(time));
        }
        Ok(Self(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
    }
}

impl<'r> Decode<'r, Postgres> for OptTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if sqlx::ValueRef::is_null(&value) {
            return Ok(Self(None));
        }
        Ok(Self(Some(Time::decode(value)?.0)))
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f{1,6}]±HH[:MM[:SS]]`, or None for any other text.
fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let digits = |at: usize, len: usize| -> Option<u32> {
        let part = b.get(at..at + len)?;
        part.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if b.len() < 22
        || !(sep(4, b'-') && sep(7, b'-') && sep(10, b' ') && sep(13, b':') && sep(16, b':'))
    {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(digits(0, 4)? as i32, digits(5, 2)?, digits(8, 2)?)?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let mut at = 19;
    let mut micros = 0;
    if sep(at, b'.') {
        let start = at + 1;
        let len = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=6).contains(&len) {
            return None;
        }
        micros = digits(start, len)? * 10u32.pow(6 - len as u32);
        at = start + len;
    }
    let sign = match b.get(at)? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut offset = digits(at + 1, 2)? * 3600;
    at += 3;
    for unit in [60, 1] {
        if at == b.len() {
            break;
        }
        if !sep(at, b':') {
            return None;
        }
        offset += digits(at + 1, 2)? * unit;
        at += 3;
    }
    if at != b.len() {
        return None;
    }
    let local = date.and_hms_micro_opt(hour, minute, second, micros)?;
    let zone = FixedOffset::east_opt(sign * offset as i32)?;
    Some(
        zone.from_local_datetime(&local)
            .single()?
            .with_timezone(&Utc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_parse(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
            .expect("chrono parses it")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_iso_shapes_parse_as_chrono_does() {
        for s in [
            "2026-12-01 14:22:03.123456+00",
            "2026-12-01 14:22:03+00",
            "2026-12-01 14:22:03.1+00",
            "2026-12-01 14:22:03.000010+00",
            "2024-02-29 23:59:59.999999+05:30",
            "1969-07-20 20:17:40-04",
            "0001-01-01 00:00:00+00",
        ] {
            assert_eq!(parse_iso(s), Some(chrono_parse(s)), "{s}");
        }
        // PostgreSQL prints offsets of historical zones with seconds, which
        // chrono's format parser cannot read.
        assert_eq!(
            parse_iso("1900-01-01 00:00:00+00:09:21"),
            Some(chrono_parse("1899-12-31 23:50:39+00"))
        );
    }

    #[test]
    fn other_text_is_left_to_sqlx() {
        for s in [
            "infinity",
            "-infinity",
            "10000-01-01 00:00:00+00",
            "0044-03-15 12:00:00+00 BC",
            "2026-02-30 00:00:00+00",
            "2026-12-01 24:00:00+00",
            "2026-12-01T14:22:03+00",
            "2026-12-01 14:22:03.1234567+00",
            "2026-12-01 14:22:03.+00",
            "2026-12-01 14:22:03+0",
            "2026-12-01 14:22:03+00:",
            "2026-12-01 14:22:03",
            "",
        ] {
            assert_eq!(parse_iso(s), None, "{s}");
        }
    }
}

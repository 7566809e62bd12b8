//! Route age for the precedence tie-break: `metadata.creationTimestamp`
//! (RFC 3339) as a UTC instant that orders correctly whatever offset it was
//! written with. The API server always writes `…Z`, but routes can come from
//! files, where `+02:00` is as valid as `Z`; comparing the text would order
//! those wrongly.

/// Seconds since the Unix epoch and the nanoseconds past them; `Ord` is
/// chronological.
pub(super) type Instant = (i64, u32);

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub(super) fn parse_rfc3339(text: &str) -> Result<Instant, String> {
    let fail = |what: &str| {
        format!(
            "timestamp {text:?} is not RFC 3339 ({what}); write it like \"2024-05-01T12:00:00Z\" or leave it to the API server"
        )
    };
    let b = text.as_bytes();
    if b.len() < 20 {
        return Err(fail("too short"));
    }
    let number = |from: usize, to: usize| -> Result<i64, String> {
        let digits = text.get(from..to).ok_or_else(|| fail("not ASCII"))?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(fail("a digit is missing"));
        }
        digits.parse().map_err(|_| fail("a number is out of range"))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b[at] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(fail("separators are misplaced"));
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(fail("no such date"));
    }
    // 60 is a leap second, which RFC 3339 allows.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(fail("no such time of day"));
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b[at] == b'.' {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(fail("the fraction after '.' has no digits"));
        }
        // Digits past nanoseconds cannot change the order of real routes.
        for (place, &digit) in b[at + 1..at + 1 + digits].iter().enumerate().take(9) {
            nanos += u32::from(digit - b'0') * 10u32.pow(8 - place as u32);
        }
        at += 1 + digits;
    }
    let offset_seconds = match &b[at..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(at + 1, at + 3)?, number(at + 4, at + 6)?);
            if hours > 23 || minutes > 59 {
                return Err(fail("the offset is out of range"));
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'+' { seconds } else { -seconds }
        }
        _ => return Err(fail("the zone must be Z or ±HH:MM")),
    };
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Ok((local - offset_seconds, nanos))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 in the proleptic Gregorian calendar, counting years
/// from March so the leap day falls at the end of each counted year.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

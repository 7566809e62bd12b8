//! Gateway API durations (GEP-2257): one to four `<1–5 digits><unit>` parts,
//! units `h`, `m`, `s`, `ms`, summed — the grammar
//! `^([0-9]{1,5}(h|m|s|ms)){1,4}$`. Parsed by hand rather than by regex so
//! each kind of mistake gets its own message.
use std::time::Duration;

/// What to write instead, appended to every parse error.
const HINT: &str =
    "write up to four parts of 1-5 digits and a unit h, m, s or ms, e.g. \"1m30s\" or \"500ms\"";

/// Parses a Gateway API duration (`10s`, `1h30m`, `250ms`, `0s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("duration is empty; {HINT}"));
    }
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut at = 0;
    let mut parts = 0;
    while at < bytes.len() {
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(format!(
                "duration {text:?} has {:?} where a number was expected; {HINT}",
                &text[at..]
            ));
        }
        if digits > 5 {
            return Err(format!(
                "duration {text:?} has a number of {digits} digits (at most 5); {HINT}"
            ));
        }
        let number: u64 = text[at..at + digits]
            .parse()
            .expect("at most five ASCII digits always fit a u64");
        at += digits;
        let rest = &text[at..];
        let (unit, width) = if rest.starts_with("ms") {
            (Duration::from_millis(number), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(number * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(number * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(number), 1)
        } else if rest.is_empty() {
            return Err(format!("duration {text:?} ends without a unit; {HINT}"));
        } else {
            return Err(format!(
                "duration {text:?} has an unknown unit in {rest:?}; {HINT}"
            ));
        };
        at += width;
        parts += 1;
        if parts > 4 {
            return Err(format!(
                "duration {text:?} has more than four parts; {HINT}"
            ));
        }
        total += unit;
    }
    Ok(total)
}

//! `strftime_now`'s clock: Python's `datetime.strftime` for UTC Unix times,
//! on a calendar walked from 1970 (no time-zone data, no locale).

use std::fmt::Write as _;

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The UTC calendar fields of a Unix time.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 1..=366
    yday: u32,
    /// 0 = Monday
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Splits `unix_secs` into UTC calendar fields by walking whole years and
/// months from 1970 (exact for any i64 time the clock can produce; times
/// beyond ±1e12 s are clamped).
fn civil(unix_secs: i64) -> Civil {
    let secs = unix_secs.clamp(-1_000_000_000_000, 1_000_000_000_000);
    let mut days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400) as u32;
    // 1970-01-01 was a Thursday (weekday 3 counting Monday as 0).
    let weekday = (days + 3).rem_euclid(7) as u32;
    // Whole 400-year cycles (146097 days) first, then single years.
    let mut year = 1970 + 400 * days.div_euclid(146_097);
    days = days.rem_euclid(146_097);
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let yday = days as u32 + 1;
    let mut month = 1u32;
    let mut rest = days as u32;
    loop {
        let len = match month {
            2 if is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if rest < len || month == 12 {
            break;
        }
        rest -= len;
        month += 1;
    }
    Civil {
        year,
        month,
        day: rest + 1,
        yday,
        weekday,
        hour: tod / 3600,
        minute: tod / 60 % 60,
        second: tod % 60,
    }
}

/// Python's `datetime.strftime` in the C locale, UTC, for the codes
/// `%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %F %T %%` (and `%-d`,
/// `%-m`, `%-H`, `%-I`, `%-M`, `%-S`: no padding, as glibc); any other
/// code is an error naming it.
pub fn strftime(format: &str, unix_secs: i64) -> Result<String, String> {
    let t = civil(unix_secs);
    let hour12 = match t.hour % 12 {
        0 => 12,
        h => h,
    };
    let month = MONTHS[(t.month - 1) as usize % 12];
    let weekday = WEEKDAYS[t.weekday as usize % 7];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut code = chars.next();
        let unpadded = code == Some('-');
        if unpadded {
            code = chars.next();
        }
        let num = |out: &mut String, v: u32| {
            if unpadded {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:02}");
            }
        };
        match code {
            Some('a') if !unpadded => out.push_str(&weekday[..3]),
            Some('A') if !unpadded => out.push_str(weekday),
            Some('b') if !unpadded => out.push_str(&month[..3]),
            Some('B') if !unpadded => out.push_str(month),
            Some('d') => num(&mut out, t.day),
            Some('e') if !unpadded => {
                let _ = write!(out, "{:>2}", t.day);
            }
            Some('H') => num(&mut out, t.hour),
            Some('I') => num(&mut out, hour12),
            Some('j') if !unpadded => {
                let _ = write!(out, "{:03}", t.yday);
            }
            Some('m') => num(&mut out, t.month),
            Some('M') => num(&mut out, t.minute),
            Some('p') if !unpadded => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            Some('S') => num(&mut out, t.second),
            Some('y') if !unpadded => {
                let _ = write!(out, "{:02}", t.year.rem_euclid(100));
            }
            Some('Y') if !unpadded => {
                let _ = write!(out, "{}", t.year);
            }
            Some('F') if !unpadded => {
                let _ = write!(out, "{}-{:02}-{:02}", t.year, t.month, t.day);
            }
            Some('T') if !unpadded => {
                let _ = write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second);
            }
            Some('%') if !unpadded => out.push('%'),
            Some(other) => {
                let dash = if unpadded { "-" } else { "" };
                return Err(format!(
                    "strftime_now: unsupported format code %{dash}{other}"
                ));
            }
            None => return Err("strftime_now: format ends with a lone %".to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_matches_known_dates() {
        // 2026-03-05 09:07:02 UTC, a Thursday (day 64 of the year).
        let t = civil(1_772_701_622);
        assert_eq!(
            t,
            Civil {
                year: 2026,
                month: 3,
                day: 5,
                yday: 64,
                weekday: 3,
                hour: 9,
                minute: 7,
                second: 2
            }
        );
        // 2024-02-29 (leap day), a Thursday; 1969-12-31 23:59:59, a Wednesday.
        let leap = civil(1_709_164_800);
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2024, 2, 29, 3)
        );
        let before = civil(-1);
        assert_eq!(
            (
                before.year,
                before.month,
                before.day,
                before.weekday,
                before.hour
            ),
            (1969, 12, 31, 2, 23)
        );
        // 2000-12-31, day 366 of a leap century year.
        let end = civil(978_220_800);
        assert_eq!(
            (end.year, end.month, end.day, end.yday),
            (2000, 12, 31, 366)
        );
    }

    #[test]
    fn strftime_formats_python_codes() {
        let t = 1_772_701_622; // 2026-03-05 09:07:02 UTC
        assert_eq!(strftime("%d %b %Y", t).as_deref(), Ok("05 Mar 2026"));
        assert_eq!(
            strftime("%A %B %-d, %I:%M %p (%j) %y %F %T %e %%", t).as_deref(),
            Ok("Thursday March 5, 09:07 AM (064) 26 2026-03-05 09:07:02  5 %")
        );
        assert!(strftime("%Q", t).unwrap_err().contains("%Q"));
        assert!(strftime("50%", t).is_err());
        // Extreme clocks are clamped, not panics.
        assert!(strftime("%Y", i64::MAX).is_ok());
        assert!(strftime("%Y", i64::MIN).is_ok());
    }
}

//! The time of a log line as the plain format writes it: RFC 3339 in UTC, to the
//! microsecond (`2026-12-07T09:25:32.176070Z`).

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends `time` to `line`; a time before 1970 is written as 1970's first instant.
/// The date and time to the second are kept from the thread's last line and only
/// written anew when the second changed: the calls of one second share them, so that
/// the calendar's arithmetic is done once a second rather than once a line.
pub(super) fn write(line: &mut Vec<u8>, time: SystemTime) {
    thread_local! {
        /// The second of this thread's last line, and its text up to the `.`.
        static SECOND: Cell<Option<(u64, [u8; 20])>> = const { Cell::new(None) };
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let prefix = match SECOND.get() {
        Some((second, prefix)) if second == seconds => prefix,
        _ => {
            let prefix = to_the_second(seconds);
            SECOND.set(Some((seconds, prefix)));
            prefix
        }
    };
    line.extend_from_slice(&prefix);
    let mut micros = *b"000000Z";
    digits(&mut micros[..6], u64::from(since.subsec_micros()));
    line.extend_from_slice(&micros);
}

/// `2026-12-07T09:25:32.`: the time `seconds` after 1970 up to its fraction.
fn to_the_second(seconds: u64) -> [u8; 20] {
    let (year, month, day) = civil(seconds / 86_400);
    let of_day = seconds % 86_400;
    let mut text = [0u8; 20];
    digits(&mut text[0..4], year);
    text[4] = b'-';
    digits(&mut text[5..7], month);
    text[7] = b'-';
    digits(&mut text[8..10], day);
    text[10] = b'T';
    digits(&mut text[11..13], of_day / 3600);
    text[13] = b':';
    digits(&mut text[14..16], of_day / 60 % 60);
    text[16] = b':';
    digits(&mut text[17..19], of_day % 60);
    text[19] = b'.';
    text
}

/// Writes the last `out.len()` decimal digits of `value`, zero-padded.
pub(super) fn digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        // Truncation intended: one decimal digit.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date (year, month, day) `days` after 1970-01-01: the
/// calendar counted in 400-year eras of 146,097 days, each year starting in March so
/// that the leap day falls last.
fn civil(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01.
    let since_march = days + 719_468;
    let era = since_march / 146_097;
    let day_of_era = since_march % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn text(time: SystemTime) -> String {
        let mut line = Vec::new();
        write(&mut line, time);
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn times_are_rfc3339_in_utc_to_the_microsecond() {
        assert_eq!(text(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap_day = UNIX_EPOCH + Duration::new(951_782_400 + 3_723, 4_005_000);
        assert_eq!(text(leap_day), "2000-02-29T01:02:03.004005Z");
        let new_year = UNIX_EPOCH + Duration::new(1_798_761_599, 999_999_999);
        assert_eq!(text(new_year), "2026-12-31T23:59:59.999999Z");
    }

    /// A thread's cached second is not reused for another second, earlier or later.
    #[test]
    fn each_line_is_written_with_its_own_second() {
        let at = |seconds: u64, micros: u32| UNIX_EPOCH + Duration::new(seconds, micros * 1_000);
        assert_eq!(text(at(1_798_761_599, 5)), "2026-12-31T23:59:59.000005Z");
        assert_eq!(
            text(at(1_798_761_599, 999_999)),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(text(at(1_798_761_600, 0)), "2027-01-01T00:00:00.000000Z");
        assert_eq!(text(at(1_798_761_599, 1)), "2026-12-31T23:59:59.000001Z");
        assert_eq!(text(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn dates_agree_with_http_dates_over_four_centuries() {
        // Every 37 hours and a bit from 1970 to 2370: leap years, centuries, 2000.
        let mut seconds = 0u64;
        while seconds < 12_622_780_800 {
            let time = UNIX_EPOCH + Duration::from_secs(seconds);
            let ours = text(time);
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let http = httpdate::fmt_http_date(time);
            let fields: Vec<&str> = http.split([' ', ':']).collect();
            let month = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ]
            .iter()
            .position(|name| *name == fields[2])
            .unwrap()
                + 1;
            let expected = format!(
                "{}-{month:02}-{}T{}:{}:{}.000000Z",
                fields[3], fields[1], fields[4], fields[5], fields[6]
            );
            assert_eq!(ours, expected, "{seconds}");
            seconds += 133_337;
        }
    }
}

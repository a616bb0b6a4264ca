//! Wall-clock timestamps as RFC 3339 UTC strings with milliseconds
//! (`2024-05-01T12:34:56.789Z`), the form `status.json` and `GET /build/status` carry; and
//! the millisecond clock log files are named by.

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(jiff::Timestamp::now())
}

/// Formats a timestamp as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    format!("{t:.3}")
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    fn at(millis: i64) -> String {
        rfc3339(jiff::Timestamp::from_millisecond(millis).unwrap())
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951782400` → Tue Feb 29 00:00:00 UTC 2000 (a leap day).
        assert_eq!(at(951_782_400_123), "2000-02-29T00:00:00.123Z");
        // `date -u -d @1700000000` → Tue Nov 14 22:13:20 UTC 2023.
        assert_eq!(at(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}

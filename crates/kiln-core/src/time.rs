//! Seconds since the Unix epoch as a UTC calendar date and time of day, for run ids and
//! the times pages show (no time-zone database: kiln writes and shows UTC only).

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Minute, 0–59.
    pub minute: u32,
    /// Second, 0–59.
    pub second: u32,
}

impl Utc {
    /// The date and time `secs` seconds after 1970-01-01 00:00:00 UTC (Howard Hinnant's
    /// civil-from-days algorithm).
    pub fn from_unix(secs: u64) -> Utc {
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Utc;

    #[test]
    fn known_dates() {
        let t = |y, mo, d, h, mi, s| Utc {
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
        };
        assert_eq!(Utc::from_unix(0), t(1970, 1, 1, 0, 0, 0));
        assert_eq!(Utc::from_unix(951_782_400), t(2000, 2, 29, 0, 0, 0));
        assert_eq!(Utc::from_unix(1_796_101_505), t(2026, 12, 1, 5, 5, 5));
        assert_eq!(Utc::from_unix(4_102_444_799), t(2099, 12, 31, 23, 59, 59));
    }
}

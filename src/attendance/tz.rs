//! Local time for exports: a named zone (`attendance.time_zone`, e.g. Europe/Oslo) from the
//! system's time-zone database (`/usr/share/zoneinfo`, Debian's `tzdata`), read by `jiff`.
//!
//! Why the system's database and not one compiled in (`jiff`'s `tzdb-bundle-always`): tzdata
//! is updated by the distribution when a country changes its rules, without a new kursrelay.
//! A machine without tzdata (a slim container) still exports in UTC and in the default zone,
//! Europe/Oslo, from its POSIX rule (the EU's, Norway's since 1996); any other zone needs the
//! database, and start-up says so.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Norway's rule since 1996 (the EU's), for a machine without tzdata: the default zone must
/// work everywhere.
const OSLO_RULE: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

#[derive(Debug, thiserror::Error)]
pub enum TzError {
    #[error("`{0}` is not a time-zone name like Europe/Oslo")]
    BadName(String),
    #[error(
        "time zone {name} is not in the system's time-zone database (install tzdata): {source}"
    )]
    Missing { name: String, source: jiff::Error },
}

#[derive(Debug, Clone)]
pub struct Zone(TimeZone);

impl Zone {
    /// A zone from the system database by name.
    pub fn load(name: &str) -> Result<Zone, TzError> {
        let ok = !name.is_empty()
            && !name.starts_with('/')
            && !name
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !ok {
            return Err(TzError::BadName(name.to_owned()));
        }
        match jiff::tz::db().get(name) {
            Ok(tz) => Ok(Zone(tz)),
            Err(_) if name == "UTC" || name == "Etc/UTC" => Ok(Zone(TimeZone::UTC)),
            Err(_) if name == "Europe/Oslo" => Ok(Zone::oslo_rule()),
            Err(source) => Err(TzError::Missing {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Europe/Oslo from its POSIX rule alone.
    fn oslo_rule() -> Zone {
        Zone(TimeZone::posix(OSLO_RULE).expect("the EU rule is a valid POSIX TZ string"))
    }

    /// `YYYY-MM-DD HH:MM:SS` in this zone, for an instant in milliseconds since the epoch
    /// (empty for one outside the years -9999..=9999, which no record has).
    pub fn format_ms(&self, ms: i64) -> String {
        self.local(ms, "%Y-%m-%d %H:%M:%S")
    }

    /// `YYYY-MM-DD` in this zone.
    pub fn date_ms(&self, ms: i64) -> String {
        self.local(ms, "%Y-%m-%d")
    }

    fn local(&self, ms: i64, format: &str) -> String {
        match Timestamp::from_millisecond(ms) {
            Ok(t) => self.0.to_datetime(t).strftime(format).to_string(),
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    /// Each side of both changes of a year, and an ordinary winter and summer instant.
    const OSLO: [(&str, &str); 8] = [
        ("2026-11-22T08:05:09Z", "2026-11-22 09:05:09"),
        ("2026-06-01T08:00:00Z", "2026-06-01 10:00:00"),
        // Spring forward: 02:00 local does not exist.
        ("2026-03-29T00:59:59Z", "2026-03-29 01:59:59"),
        ("2026-03-29T01:00:00Z", "2026-03-29 03:00:00"),
        // Fall back: 02:00–03:00 local happens twice.
        ("2026-10-25T00:59:59Z", "2026-10-25 02:59:59"),
        ("2026-10-25T01:00:00Z", "2026-10-25 02:00:00"),
        // Past midnight in local time on the next day, years beyond any listed change.
        ("2045-07-01T22:30:00Z", "2045-07-02 00:30:00"),
        ("2040-10-28T01:00:00Z", "2040-10-28 02:00:00"),
    ];

    #[test]
    fn oslo_from_the_system_database() {
        // Debian's tzdata is installed wherever kursrelay runs (and on CI).
        let oslo = Zone::load("Europe/Oslo").expect("tzdata");
        for (utc, local) in OSLO {
            assert_eq!(oslo.format_ms(ms(utc)), local, "{utc}");
        }
        assert_eq!(oslo.date_ms(ms("2026-03-28T23:30:00Z")), "2026-03-29");
        for bad in ["../etc/passwd", "/etc/passwd", "Europe//Oslo", ""] {
            assert!(matches!(Zone::load(bad), Err(TzError::BadName(_))), "{bad}");
        }
        assert!(matches!(
            Zone::load("Europe/Atlantis"),
            Err(TzError::Missing { .. })
        ));
        assert_eq!(
            Zone::load("UTC")
                .unwrap()
                .format_ms(ms("2026-06-01T08:00:00Z")),
            "2026-06-01 08:00:00"
        );
    }

    #[test]
    fn oslo_without_the_database() {
        let oslo = Zone::oslo_rule();
        for (utc, local) in OSLO {
            assert_eq!(oslo.format_ms(ms(utc)), local, "{utc}");
        }
    }
}

//! Local time for exports: a named zone (`attendance.time_zone`, e.g. Europe/Oslo) from the
//! system's time-zone database (TZif files under /usr/share/zoneinfo, Debian's `tzdata`).
//! Parsing and conversion are pure (`Zone::parse`, `Zone::offset_at`); only `Zone::load` reads
//! a file.
//!
//! A TZif file lists every change of UTC offset up to some year; after the last one, its footer
//! (a POSIX TZ rule such as `CET-1CEST,M3.5.0,M10.5.0/3`) gives the yearly rule. Rules of the
//! `Mm.w.d` form are understood (every European and American zone uses them); for any other
//! form the offset of the last listed change is kept. Without the database, `UTC` and the
//! default `Europe/Oslo` (its rule since 1996) still work.

use std::path::Path;

const ZONEINFO: &str = "/usr/share/zoneinfo";
/// Norway's rule since 1996 (the EU's), for a machine without tzdata: the default zone must
/// work everywhere. Any other zone needs the database.
const OSLO_RULE: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

#[derive(Debug, thiserror::Error)]
pub enum TzError {
    #[error("`{0}` is not a time-zone name like Europe/Oslo")]
    BadName(String),
    #[error("time zone {name} is not in {ZONEINFO} (install tzdata): {source}")]
    Missing {
        name: String,
        source: std::io::Error,
    },
    #[error("time zone file {0} is not valid TZif")]
    Malformed(String),
}

/// One change of offset in a yearly rule: month, week (5 = last), weekday (0 = Sunday), and
/// the local time of day it happens at, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RuleDate {
    month: u32,
    week: u32,
    weekday: u32,
    at_secs: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    std_offset: i64,
    /// Daylight-saving offset and when it starts and ends; None for a zone without DST.
    dst: Option<(i64, RuleDate, RuleDate)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// (UTC instant, offset from then on), in order.
    transitions: Vec<(i64, i64)>,
    /// Offset before the first transition.
    initial: i64,
    rule: Option<Rule>,
}

impl Zone {
    /// Reads a zone from the system database by name.
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
        let bytes = match std::fs::read(Path::new(ZONEINFO).join(name)) {
            Ok(b) => b,
            Err(_) if name == "UTC" || name == "Etc/UTC" => return Ok(Zone::utc()),
            Err(_) if name == "Europe/Oslo" => {
                return Ok(Zone {
                    transitions: Vec::new(),
                    initial: 3600,
                    rule: parse_rule(OSLO_RULE),
                })
            }
            Err(source) => {
                return Err(TzError::Missing {
                    name: name.to_owned(),
                    source,
                })
            }
        };
        Zone::parse(&bytes).ok_or_else(|| TzError::Malformed(name.to_owned()))
    }

    /// UTC, for when no zone is wanted.
    pub fn utc() -> Zone {
        Zone {
            transitions: Vec::new(),
            initial: 0,
            rule: None,
        }
    }

    /// Parses TZif (version 2 or later: the 64-bit block and the footer; version 1: 32-bit).
    pub fn parse(b: &[u8]) -> Option<Zone> {
        let header = |at: usize| -> Option<(u8, [usize; 6])> {
            if b.get(at..at + 4)? != b"TZif" {
                return None;
            }
            let mut counts = [0usize; 6];
            for (i, c) in counts.iter_mut().enumerate() {
                let s = at + 20 + i * 4;
                *c = u32::from_be_bytes(b.get(s..s + 4)?.try_into().ok()?) as usize;
            }
            Some((*b.get(at + 4)?, counts))
        };
        let (version, counts) = header(0)?;
        let block_len = |c: [usize; 6], time: usize| {
            let [isut, isstd, leap, timecnt, typecnt, chars] = c;
            timecnt * time + timecnt + typecnt * 6 + chars + leap * (time + 4) + isstd + isut
        };
        let (start, counts, time_size) = if version >= b'2' {
            let second = 44 + block_len(counts, 4);
            (second + 44, header(second)?.1, 8)
        } else {
            (44, counts, 4)
        };
        let [_, _, _, timecnt, typecnt, _] = counts;
        if typecnt == 0 {
            return None;
        }
        let times_at = start;
        let idx_at = times_at + timecnt * time_size;
        let types_at = idx_at + timecnt;
        let offset_of = |t: usize| -> Option<i64> {
            let s = types_at + t * 6;
            Some(i32::from_be_bytes(b.get(s..s + 4)?.try_into().ok()?) as i64)
        };
        let mut transitions = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let s = times_at + i * time_size;
            let at = if time_size == 8 {
                i64::from_be_bytes(b.get(s..s + 8)?.try_into().ok()?)
            } else {
                i32::from_be_bytes(b.get(s..s + 4)?.try_into().ok()?) as i64
            };
            let t = *b.get(idx_at + i)? as usize;
            if t >= typecnt {
                return None;
            }
            transitions.push((at, offset_of(t)?));
        }
        let rule = if version >= b'2' {
            let end = start + block_len(counts, 8);
            b.get(end..)
                .and_then(|f| std::str::from_utf8(f).ok())
                .and_then(|f| f.trim_matches('\n').lines().next().map(str::to_owned))
                .and_then(|f| parse_rule(&f))
        } else {
            None
        };
        Some(Zone {
            transitions,
            initial: offset_of(0)?,
            rule,
        })
    }

    /// Seconds to add to UTC for local time at the UTC instant `t` (seconds since the epoch).
    pub fn offset_at(&self, t: i64) -> i64 {
        let last = self.transitions.last();
        if let (Some(rule), Some(&(last_at, _))) = (&self.rule, last) {
            if t >= last_at {
                return rule.offset_at(t);
            }
        }
        if let (Some(rule), None) = (&self.rule, last) {
            return rule.offset_at(t);
        }
        match self.transitions.partition_point(|&(at, _)| at <= t) {
            0 => self.initial,
            n => self.transitions[n - 1].1,
        }
    }

    /// `YYYY-MM-DD HH:MM:SS` in this zone, for an instant in milliseconds since the epoch.
    pub fn format_ms(&self, ms: i64) -> String {
        let secs = ms.div_euclid(1000);
        let local = secs + self.offset_at(secs);
        let (y, m, d) = civil_from_days(local.div_euclid(86_400));
        let s = local.rem_euclid(86_400);
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }

    /// `YYYY-MM-DD` in this zone.
    pub fn date_ms(&self, ms: i64) -> String {
        self.format_ms(ms)[..10].to_owned()
    }
}

impl Rule {
    fn offset_at(&self, t: i64) -> i64 {
        let Some((dst_offset, start, end)) = self.dst else {
            return self.std_offset;
        };
        let (year, _, _) = civil_from_days((t + self.std_offset).div_euclid(86_400));
        // The start is given in standard local time, the end in daylight local time.
        let begins = start.instant(year) - self.std_offset;
        let ends = end.instant(year) - dst_offset;
        let in_dst = if begins < ends {
            t >= begins && t < ends
        } else {
            // Southern hemisphere: DST spans the new year.
            t >= begins || t < ends
        };
        if in_dst {
            dst_offset
        } else {
            self.std_offset
        }
    }
}

impl RuleDate {
    /// The local instant (seconds, as if UTC) of this date in `year`.
    fn instant(self, year: i64) -> i64 {
        let first = days_from_civil(year, self.month, 1);
        // 1970-01-01 was a Thursday (weekday 4).
        let first_wd = (first + 4).rem_euclid(7) as u32;
        let mut day = 1 + (self.weekday + 7 - first_wd) % 7 + (self.week.min(5) - 1) * 7;
        let len = days_in_month(year, self.month);
        while day > len {
            day -= 7;
        }
        days_from_civil(year, self.month, day) * 86_400 + self.at_secs
    }
}

/// Parses a POSIX TZ rule such as `CET-1CEST,M3.5.0,M10.5.0/3` (offsets west of UTC are
/// positive there; they are turned around here).
fn parse_rule(s: &str) -> Option<Rule> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    p.name()?;
    let std_offset = -p.offset()?;
    if p.done() {
        return Some(Rule {
            std_offset,
            dst: None,
        });
    }
    p.name()?;
    let dst_offset = if p.peek() == Some(b',') {
        std_offset + 3600
    } else {
        -p.offset()?
    };
    p.expect(b',')?;
    let start = p.date()?;
    p.expect(b',')?;
    let end = p.date()?;
    Some(Rule {
        std_offset,
        dst: Some((dst_offset, start, end)),
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    fn name(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'<') {
            while self.peek()? != b'>' {
                self.i += 1;
            }
            self.i += 1;
        } else {
            while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                self.i += 1;
            }
        }
        (self.i > start).then_some(())
    }
    fn number(&mut self) -> Option<i64> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
    }
    /// `[+-]hh[:mm[:ss]]` in seconds.
    fn offset(&mut self) -> Option<i64> {
        let sign = match self.peek()? {
            b'-' => {
                self.i += 1;
                -1
            }
            b'+' => {
                self.i += 1;
                1
            }
            _ => 1,
        };
        let mut secs = self.number()? * 3600;
        for unit in [60, 1] {
            if self.peek() != Some(b':') {
                break;
            }
            self.i += 1;
            secs += self.number()? * unit;
        }
        Some(sign * secs)
    }
    /// `Mm.w.d[/time]`; other forms are not understood.
    fn date(&mut self) -> Option<RuleDate> {
        self.expect(b'M')?;
        let month = self.number()? as u32;
        self.expect(b'.')?;
        let week = self.number()? as u32;
        self.expect(b'.')?;
        let weekday = self.number()? as u32;
        let at_secs = if self.peek() == Some(b'/') {
            self.i += 1;
            self.offset()?
        } else {
            7200
        };
        ((1..=12).contains(&month) && (1..=5).contains(&week) && weekday < 7).then_some(RuleDate {
            month,
            week,
            weekday,
            at_secs,
        })
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        humantime::parse_rfc3339(s)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn calendar_round_trip() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (20_415, (2025, 11, 23)),
            (-1, (1969, 12, 31)),
            (11_016, (2000, 2, 29)),
        ] {
            assert_eq!(civil_from_days(days), date);
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
        }
    }

    #[test]
    fn the_eu_rule_by_itself() {
        let rule = parse_rule("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        // Far beyond any file's list of changes.
        let cases = [
            ("2040-01-15T12:00:00Z", 3600),
            ("2040-03-25T00:59:59Z", 3600),
            ("2040-03-25T01:00:00Z", 7200),
            ("2040-07-01T12:00:00Z", 7200),
            ("2040-10-28T00:59:59Z", 7200),
            ("2040-10-28T01:00:00Z", 3600),
        ];
        for (t, want) in cases {
            assert_eq!(rule.offset_at(at(t)), want, "{t}");
        }
        let zone = Zone {
            transitions: Vec::new(),
            initial: 3600,
            rule: Some(rule),
        };
        assert_eq!(
            zone.format_ms(at("2040-07-01T12:00:00Z") * 1000),
            "2040-07-01 14:00:00"
        );
        assert_eq!(parse_rule("UTC0").unwrap().offset_at(0), 0);
        assert_eq!(parse_rule("<+03>-3").unwrap().offset_at(0), 3 * 3600);
        assert_eq!(
            parse_rule("EST5EDT,M3.2.0,M11.1.0")
                .unwrap()
                .offset_at(at("2040-01-01T00:00:00Z")),
            -5 * 3600
        );
    }

    #[test]
    fn oslo_without_the_database() {
        let oslo = Zone {
            transitions: Vec::new(),
            initial: 3600,
            rule: parse_rule(OSLO_RULE),
        };
        assert_eq!(
            oslo.format_ms(at("2026-11-22T08:05:09Z") * 1000),
            "2026-11-22 09:05:09"
        );
        assert_eq!(
            oslo.format_ms(at("2026-06-01T08:00:00Z") * 1000),
            "2026-06-01 10:00:00"
        );
    }

    #[test]
    fn oslo_from_the_system_database() {
        // Debian's tzdata is installed wherever kursrelay runs (and on CI).
        let oslo = Zone::load("Europe/Oslo").expect("tzdata");
        let cases = [
            ("2026-11-22T08:05:09Z", "2026-11-22 09:05:09"),
            ("2026-06-01T08:00:00Z", "2026-06-01 10:00:00"),
            ("2026-03-29T00:59:59Z", "2026-03-29 01:59:59"),
            ("2026-03-29T01:00:00Z", "2026-03-29 03:00:00"),
            ("2045-07-01T22:30:00Z", "2045-07-02 00:30:00"),
        ];
        for (utc, local) in cases {
            assert_eq!(oslo.format_ms(at(utc) * 1000), local, "{utc}");
        }
        for bad in ["../etc/passwd", "/etc/passwd", "Europe//Oslo", ""] {
            assert!(matches!(Zone::load(bad), Err(TzError::BadName(_))), "{bad}");
        }
        assert!(matches!(
            Zone::load("Europe/Atlantis"),
            Err(TzError::Missing { .. })
        ));
    }
}

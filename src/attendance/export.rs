//! Attendance exports for registration staff: CSV (one row per person or site, columns in
//! docs/api.md) and JSON (the same, plus the session's totals). Pure formatting.
//!
//! The CSV is made for a spreadsheet set to Norwegian, as registration staff use it: UTF-8 with
//! a byte-order mark (or Excel guesses another encoding and breaks æ, ø, å), `;` between
//! fields (a comma is the decimal sign there), decimal commas, and local time in the
//! configured zone (`attendance.time_zone`). Its headers and words (`ja`/`nei`, roles) are
//! Norwegian bokmål, like the people who read it; `CsvLanguage::English` gives the same
//! columns with the English names of docs/api.md, for scripts. The JSON stays
//! machine-readable: English keys, RFC 3339 UTC times and decimal points.

use serde::Serialize;

use super::summary::SessionSummary;
use super::tz::Zone;
use crate::db::courses::rfc3339;
use crate::db::Session;
use crate::protocol::Role;

/// The language of a CSV export's headers and words (not of the data: names stay as given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsvLanguage {
    /// Bokmål, for registration staff (the default).
    #[default]
    Norwegian,
    /// The column names and words of docs/api.md, for scripts.
    English,
}

impl CsvLanguage {
    /// `nb` or `en` (the API's `lang`, the CLI's `--lang`).
    pub fn parse(s: &str) -> Option<CsvLanguage> {
        match s {
            "nb" => Some(CsvLanguage::Norwegian),
            "en" => Some(CsvLanguage::English),
            _ => None,
        }
    }

    fn columns(self) -> &'static [&'static str; 17] {
        match self {
            CsvLanguage::Norwegian => &CSV_COLUMNS_NB,
            CsvLanguage::English => &CSV_COLUMNS,
        }
    }

    fn yes_no(self, yes: bool) -> &'static str {
        match (self, yes) {
            (CsvLanguage::Norwegian, true) => "ja",
            (CsvLanguage::Norwegian, false) => "nei",
            (CsvLanguage::English, true) => "yes",
            (CsvLanguage::English, false) => "no",
        }
    }

    /// `member` or `site` rows.
    fn kind(self, site: bool) -> &'static str {
        match (self, site) {
            (CsvLanguage::Norwegian, false) => "person",
            (CsvLanguage::Norwegian, true) => "rom",
            (CsvLanguage::English, false) => "member",
            (CsvLanguage::English, true) => "site",
        }
    }

    fn role(self, role: Role) -> &'static str {
        match self {
            CsvLanguage::English => role.as_str(),
            CsvLanguage::Norwegian => match role {
                Role::Leader => "kursleder",
                Role::Representative => "brukerrepresentant",
                Role::Participant => "deltaker",
                Role::Site => "rom",
                Role::Interpreter => "tolk",
                Role::Encoder => "koder",
                Role::Player => "avspiller",
                Role::Captioner => "teksting",
            },
        }
    }
}

/// The CSV columns, in order, in English (documented in docs/api.md with their Norwegian
/// names, `CSV_COLUMNS_NB`).
pub const CSV_COLUMNS: [&str; 17] = [
    "session_id",
    "session_title",
    "session_date",
    "kind",
    "subject",
    "role",
    "name",
    "relative_of",
    "first_join",
    "last_leave",
    "minutes_present",
    "presence_percent",
    "meets_threshold",
    "joins",
    "closed_by_recovery",
    "max_headcount",
    "mean_headcount",
];

/// The same columns as `CSV_COLUMNS`, as the Norwegian file names them.
pub const CSV_COLUMNS_NB: [&str; 17] = [
    "økt_id",
    "økt",
    "dato",
    "type",
    "pseudonym",
    "rolle",
    "navn",
    "pårørende_til",
    "første_inn",
    "siste_ut",
    "minutter_til_stede",
    "prosent_til_stede",
    "oppfyller_kravet",
    "innlogginger",
    "lukket_ved_oppstart",
    "flest_i_rommet",
    "snitt_i_rommet",
];

/// Makes a spreadsheet open the file as UTF-8.
pub const BOM: &str = "\u{feff}";
const SEP: &str = ";";

fn csv_field(s: &str) -> String {
    // Quote when needed; a leading = + - @ is neutralised so a spreadsheet never runs it.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([';', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn time(ms: Option<i64>) -> String {
    ms.map(|m| rfc3339(m / 1000)).unwrap_or_default()
}

fn minutes(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 60_000.0)
}

/// One decimal, with a decimal comma (`8,3`).
fn decimal(x: f64) -> String {
    format!("{x:.1}").replace('.', ",")
}

/// CSV: a byte-order mark and a header, then one row per member (`kind` = member) and one per
/// site's headcount (`kind` = site; sites also have their member row). Times in `zone`.
pub fn csv(session: &Session, s: &SessionSummary, zone: &Zone, lang: CsvLanguage) -> String {
    let starts_ms = crate::db::courses::parse_time("starts_at", &session.starts_at)
        .map(|secs| secs * 1000)
        .unwrap_or_default();
    let date = zone.date_ms(starts_ms);
    let local = |ms: Option<i64>| ms.map(|m| zone.format_ms(m)).unwrap_or_default();
    let mut out = String::from(BOM);
    out.push_str(&lang.columns().join(SEP));
    out.push_str("\r\n");
    let mut row = |fields: Vec<String>| {
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(SEP),
        );
        out.push_str("\r\n");
    };
    for m in &s.members {
        row(vec![
            session.id.clone(),
            session.title.clone(),
            date.to_owned(),
            lang.kind(false).into(),
            m.subject.clone(),
            lang.role(m.role).into(),
            m.name.clone().unwrap_or_default(),
            m.relative_of.clone().unwrap_or_default(),
            local(Some(m.first_join_ms)),
            local(m.last_leave_ms),
            decimal(m.present_ms as f64 / 60_000.0),
            decimal(m.presence_pct),
            lang.yes_no(m.meets_threshold).into(),
            m.joins.to_string(),
            lang.yes_no(m.closed_by_recovery).into(),
            String::new(),
            String::new(),
        ]);
    }
    for site in &s.sites {
        row(vec![
            session.id.clone(),
            session.title.clone(),
            date.to_owned(),
            lang.kind(true).into(),
            site.subject.clone(),
            lang.role(Role::Site).into(),
            site.name.clone().unwrap_or_default(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            site.max_headcount
                .map(|n| n.to_string())
                .unwrap_or_default(),
            site.mean_headcount.map(decimal).unwrap_or_default(),
        ]);
    }
    out
}

#[derive(Serialize)]
pub struct JsonExport<'a> {
    pub session_id: &'a str,
    pub session_title: &'a str,
    pub course_id: &'a str,
    pub actual_start: String,
    pub actual_end: String,
    pub minutes: String,
    #[serde(flatten)]
    pub summary: &'a SessionSummary,
}

pub fn json(session: &Session, s: &SessionSummary) -> serde_json::Value {
    serde_json::to_value(JsonExport {
        session_id: &session.id,
        session_title: &session.title,
        course_id: &session.course_id,
        actual_start: time(s.actual_start_ms),
        actual_end: time(s.actual_end_ms),
        minutes: minutes(s.duration_ms),
        summary: s,
    })
    .unwrap_or_default()
}

/// One line of a course roll-up.
#[derive(Debug, Clone, Serialize)]
pub struct CourseLine {
    pub session_id: String,
    pub title: String,
    pub starts_at: String,
    pub minutes: String,
    pub named_participants: u32,
    pub meeting_threshold: u32,
    pub open_viewers: u32,
    pub interpreters: u32,
    pub equipment: u32,
    pub site_people_mean: f64,
}

pub fn course_line(session: &Session, s: &SessionSummary) -> CourseLine {
    CourseLine {
        session_id: session.id.clone(),
        title: session.title.clone(),
        starts_at: session.starts_at.clone(),
        minutes: minutes(s.duration_ms),
        named_participants: s.named_participants,
        meeting_threshold: s.named_participants_meeting_threshold,
        open_viewers: s.open_viewers,
        interpreters: s.interpreters,
        equipment: s.equipment,
        // An empty f64 sum is -0.0; adding 0.0 makes it the 0 a reader expects.
        site_people_mean: s.sites.iter().filter_map(|x| x.mean_headcount).sum::<f64>() + 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_field("Kari"), "Kari");
        // `;` separates fields; a comma is the decimal sign and needs no quotes.
        assert_eq!(csv_field("Volda, rom 2"), "Volda, rom 2");
        assert_eq!(csv_field("Volda; rom 2"), "\"Volda; rom 2\"");
        assert_eq!(decimal(83.333), "83,3");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }
}

//! The admin commands of the `kursrelay` binary (`course …`, `session …`, `invite …`). They
//! work on the database (the SQLite file, or the PostgreSQL server of `db.url`) directly, so they need no running server; a running server sees
//! the changes at the next join. Output is plain text for people, one record per line.

use clap::Subcommand;

use crate::auth::{join_link, Claims, TokenKey};
use crate::config::{Config, DbLocation};
use crate::db::{Db, NewInvite, NewSession, SessionState};
use crate::protocol::Role;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Courses (e.g. "Stoffskiftekurs haust 2026").
    #[command(subcommand)]
    Course(CourseCommand),
    /// Sessions (course days) and their join links.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Single invites.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Attendance exports (every export is recorded).
    #[command(subcommand)]
    Attendance(AttendanceCommand),
    /// The database file itself.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Write a consistent copy of the database to FILE (a new file), safe while the server
    /// runs (SQLite's online backup).
    Backup { file: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AttendanceCommand {
    /// Print a session's attendance as CSV or JSON.
    Export {
        #[arg(long)]
        session: String,
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// The CSV's headers and words: Norwegian bokmål (for people) or English (for scripts).
        #[arg(long, default_value = "nb", value_parser = ["nb", "en"])]
        lang: String,
    },
    /// List every export made so far (who, when, which session).
    Exports,
}

#[derive(Debug, Subcommand)]
pub enum CourseCommand {
    /// Create a course; prints its id.
    Create {
        #[arg(long)]
        title: String,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session of a course; prints its id.
    Create {
        #[arg(long)]
        course: String,
        #[arg(long)]
        title: String,
        /// UTC, e.g. 2026-11-24T09:00:00Z
        #[arg(long)]
        starts: String,
        #[arg(long)]
        ends: String,
        /// Where the course is taught, e.g. "Molde sjukehus, auditoriet".
        #[arg(long)]
        host_site: String,
        /// Allow chat (off by default).
        #[arg(long)]
        chat: bool,
        /// Show participants only how many take part, not each other's names.
        #[arg(long)]
        roster_count_only: bool,
    },
    List {
        #[arg(long)]
        course: Option<String>,
    },
    /// Add an invite and print its link.
    Invite {
        session: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The person's chosen name, or the room's name for a site.
        #[arg(long)]
        name: Option<String>,
        /// The invite of the patient a relative accompanies.
        #[arg(long)]
        relative_of: Option<String>,
        /// An open participant link (people name themselves and wait in the lobby).
        #[arg(long)]
        open: bool,
    },
    /// Add one personal invite per name in a file (one name per line, `-` for standard
    /// input; blank lines skipped) and print `name<TAB>invite<TAB>link` for each. All or none.
    InviteMany {
        session: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The file of names.
        #[arg(long)]
        names: std::path::PathBuf,
    },
    /// Print every active invite's link. With --defaults, first create a course leader, a
    /// user representative and an open participant link if the session has none.
    Links {
        session: String,
        #[arg(long)]
        defaults: bool,
    },
    /// End a session: every link stops working.
    End { session: String },
}

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// Withdraw an invite; its link stops working.
    Revoke { invite: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| "one of leader, representative, participant, site, interpreter, encoder, player, captioner".to_owned())
}

/// Runs one admin command and returns what to print.
pub async fn run(config: &Config, cmd: AdminCommand) -> anyhow::Result<String> {
    let location = config.db.location()?;
    if let AdminCommand::Db(DbCommand::Backup { file }) = &cmd {
        let source = match &location {
            DbLocation::Sqlite(path) => path.clone(),
            DbLocation::Postgres(url) => anyhow::bail!(
                "db.url is a PostgreSQL database ({}): back it up with PostgreSQL's own tools, \
                 e.g. `pg_dump --format=custom --file={} '<db.url>'` (README, \"Backup\"); \
                 `kursrelay db backup` copies SQLite files only",
                crate::config::redact_url(url),
                file.display()
            ),
        };
        // Before Db::open: a backup must not create (or migrate) the database it copies.
        let (src, dest) = (source.clone(), file.clone());
        tokio::task::spawn_blocking(move || crate::db::backup::backup(&src, &dest)).await??;
        return Ok(format!(
            "backed up {} to {}",
            source.display(),
            file.display()
        ));
    }
    let db = Db::connect(&location).await?;
    let tokens = TokenKey::new(&db.secret("join_token_key").await?);
    let link = |invite: &crate::db::Invite, ends: i64| {
        let claims = Claims::for_invite(
            &invite.session_id,
            &invite.id,
            invite.role,
            invite.open,
            ends,
            config.auth.link_validity_hours,
        );
        join_link(&tokens, &config.http.public_url, &claims)
    };
    let out = match cmd {
        AdminCommand::Course(CourseCommand::Create { title }) => db.create_course(&title).await?.id,
        AdminCommand::Course(CourseCommand::List) => db
            .courses()
            .await?
            .iter()
            .map(|c| format!("{}\t{}", c.id, c.title))
            .collect::<Vec<_>>()
            .join("\n"),
        AdminCommand::Session(SessionCommand::Create {
            course,
            title,
            starts,
            ends,
            host_site,
            chat,
            roster_count_only,
        }) => {
            let new = NewSession {
                title,
                starts_at: starts,
                ends_at: ends,
                host_site,
                chat_enabled: chat,
                roster: if roster_count_only {
                    crate::protocol::RosterMode::Count
                } else {
                    crate::protocol::RosterMode::Names
                },
            };
            db.create_session(&course, &new).await?.id
        }
        AdminCommand::Session(SessionCommand::List { course }) => db
            .sessions(course.as_deref())
            .await?
            .iter()
            .map(|s| {
                format!(
                    "{}\t{}\t{}\t{}\t{}",
                    s.id,
                    s.starts_at,
                    s.ends_at,
                    name_of(&s.state),
                    s.title
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        AdminCommand::Session(SessionCommand::Invite {
            session,
            role,
            name,
            relative_of,
            open,
        }) => {
            let s = db.session(&session).await?;
            let invite = db
                .create_invite(
                    &session,
                    &NewInvite {
                        role,
                        display_name: name,
                        relative_of,
                        open,
                    },
                )
                .await?;
            format!("{}\t{}", invite.id, link(&invite, s.ends_at_unix))
        }
        AdminCommand::Session(SessionCommand::InviteMany {
            session,
            role,
            names,
        }) => {
            let s = db.session(&session).await?;
            let text = if names.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&names)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", names.display()))?
            };
            let new: Vec<NewInvite> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|name| NewInvite {
                    role,
                    display_name: Some(name.to_owned()),
                    relative_of: None,
                    open: false,
                })
                .collect();
            if new.is_empty() {
                anyhow::bail!("{} has no names in it", names.display());
            }
            db.create_invites(&session, &new)
                .await?
                .iter()
                .map(|i| {
                    format!(
                        "{}\t{}\t{}",
                        i.display_name.as_deref().unwrap_or_default(),
                        i.id,
                        link(i, s.ends_at_unix)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        AdminCommand::Session(SessionCommand::Links { session, defaults }) => {
            let s = db.session(&session).await?;
            if s.state == SessionState::Ended {
                anyhow::bail!("the session has ended; its links no longer work");
            }
            if defaults {
                let have = db.invites(&session).await?;
                let wanted = [
                    (Role::Leader, false),
                    (Role::Representative, false),
                    (Role::Participant, true),
                ];
                for (role, open) in wanted {
                    if !have
                        .iter()
                        .any(|i| i.role == role && i.open == open && !i.revoked)
                    {
                        db.create_invite(
                            &session,
                            &NewInvite {
                                role,
                                display_name: None,
                                relative_of: None,
                                open,
                            },
                        )
                        .await?;
                    }
                }
            }
            db.invites(&session)
                .await?
                .iter()
                .filter(|i| !i.revoked)
                .map(|i| {
                    let who = if i.open {
                        "open link".to_owned()
                    } else {
                        i.display_name.clone().unwrap_or_default()
                    };
                    format!(
                        "{}\t{}\t{}\t{}",
                        i.role.as_str(),
                        who,
                        i.id,
                        link(i, s.ends_at_unix)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        AdminCommand::Session(SessionCommand::End { session }) => {
            db.session(&session).await?;
            db.advance_session(&session, SessionState::Ended).await?;
            format!("ended {session}")
        }
        AdminCommand::Attendance(AttendanceCommand::Export {
            session,
            format,
            lang,
        }) => {
            let s = db.session(&session).await?;
            let threshold = config.attendance.threshold_percent;
            let summary = crate::attendance::session_summary(
                &db,
                &session,
                crate::attendance::now_ms(),
                threshold,
            )
            .await?;
            crate::attendance::record_export(&db, &session, "cli", &format).await?;
            if format == "csv" {
                let zone = crate::attendance::tz::Zone::load(&config.attendance.time_zone)?;
                let lang = crate::attendance::export::CsvLanguage::parse(&lang).unwrap_or_default();
                crate::attendance::export::csv(&s, &summary, &zone, lang)
                    .trim_end()
                    .to_owned()
            } else {
                serde_json::to_string_pretty(&crate::attendance::export::json(&s, &summary))?
            }
        }
        AdminCommand::Attendance(AttendanceCommand::Exports) => crate::attendance::exports(&db)
            .await?
            .iter()
            .map(|e| {
                format!(
                    "{}\t{}\t{}\t{}",
                    e.at, e.session_id, e.requested_by, e.format
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        // Handled before the database is opened (above).
        AdminCommand::Db(DbCommand::Backup { .. }) => String::new(),
        AdminCommand::Invite(InviteCommand::Revoke { invite }) => {
            db.revoke_invite(&invite).await?;
            format!("revoked {invite}")
        }
    };
    Ok(out)
}

/// The protocol's name for a role or state (`leader`, `live`, …).
fn name_of(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

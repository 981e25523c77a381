//! Attendance summaries: pure functions from a session's event log (and the invites' names) to
//! per-member presence, per-site headcounts and a course roll-up. Time comes in as data
//! (`now_ms`), so every edge is tested without a clock or a sleep.

use std::collections::HashMap;

use serde::Serialize;

use crate::protocol::Role;

/// Why an interval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    Left,
    Dropped,
    Removed,
    SessionEnded,
    /// Closed at start-up after a crash, at the member's last-seen time.
    Recovered,
}

impl LeftReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftReason::Left => "left",
            LeftReason::Dropped => "dropped",
            LeftReason::Removed => "removed",
            LeftReason::SessionEnded => "session_ended",
            LeftReason::Recovered => "recovered",
        }
    }

    pub fn parse(s: &str) -> LeftReason {
        match s {
            "left" => LeftReason::Left,
            "removed" => LeftReason::Removed,
            "session_ended" => LeftReason::SessionEnded,
            "recovered" => LeftReason::Recovered,
            _ => LeftReason::Dropped,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Joined,
    Left(LeftReason),
    Admitted,
    FloorGranted,
    FloorRevoked,
    Headcount(u32),
}

/// One attendance event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub subject: String,
    pub invite_id: String,
    pub role: Role,
    pub kind: Kind,
    pub at_ms: i64,
    pub by_recovery: bool,
}

/// What an export may say about an invite.
#[derive(Debug, Clone, Default)]
pub struct InviteInfo {
    pub name: Option<String>,
    pub relative_of: Option<String>,
    pub open: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberSummary {
    /// Pseudonymous: the invite id, or for an open-link viewer the id issued at admission.
    pub subject: String,
    pub role: Role,
    /// Only for personal invites of participants, sites, the leader and the representative:
    /// interpreters and open viewers are counted, not named.
    pub name: Option<String>,
    /// The invite (subject) of the patient a relative accompanies.
    pub relative_of: Option<String>,
    pub first_join_ms: i64,
    pub last_leave_ms: Option<i64>,
    /// Minutes present, re-joins merged, within the session's actual duration.
    pub present_ms: i64,
    pub presence_pct: f64,
    pub meets_threshold: bool,
    pub joins: u32,
    pub closed_by_recovery: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteSummary {
    pub subject: String,
    pub name: Option<String>,
    pub max_headcount: Option<u32>,
    /// Time-weighted over the site's presence after its first report.
    pub mean_headcount: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub actual_start_ms: Option<i64>,
    pub actual_end_ms: Option<i64>,
    pub duration_ms: i64,
    pub threshold_pct: f64,
    pub members: Vec<MemberSummary>,
    pub sites: Vec<SiteSummary>,
    /// Participants with a personal invite who were present.
    pub named_participants: u32,
    pub named_participants_meeting_threshold: u32,
    /// Present on an open link: counted, not named.
    pub open_viewers: u32,
    /// Counted, never as participants.
    pub interpreters: u32,
    /// Hall equipment present (encoders, players, captioners): counted, never named, never
    /// participants.
    pub equipment: u32,
}

/// Merged, clipped presence intervals of one subject.
fn intervals(events: &[&Event], start: i64, end: i64) -> Vec<(i64, i64)> {
    let mut raw = Vec::new();
    let mut open: Option<i64> = None;
    for e in events {
        match e.kind {
            Kind::Joined if open.is_none() => open = Some(e.at_ms),
            Kind::Left(_) => {
                if let Some(s) = open.take() {
                    raw.push((s, e.at_ms));
                }
            }
            _ => {}
        }
    }
    if let Some(s) = open {
        raw.push((s, end));
    }
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (s, e) in raw {
        let (s, e) = (s.max(start), e.min(end));
        if e <= s {
            continue;
        }
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Summarises one session. `ended_at_ms`: when it ended, if it has; `now_ms` closes intervals
/// still open in a running session. The actual duration runs from the first time a course
/// leader joined (or anyone, if no leader did) to the end (or the last event / now).
pub fn summarise(
    events: &[Event],
    invites: &HashMap<String, InviteInfo>,
    ended_at_ms: Option<i64>,
    now_ms: i64,
    threshold_pct: f64,
) -> SessionSummary {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.at_ms);
    let joins = sorted.iter().filter(|e| e.kind == Kind::Joined);
    let start = sorted
        .iter()
        .find(|e| e.kind == Kind::Joined && e.role == Role::Leader)
        .or_else(|| joins.clone().next())
        .map(|e| e.at_ms);
    let mut subjects: Vec<&str> = Vec::new();
    for e in &sorted {
        if e.kind == Kind::Joined && !subjects.contains(&e.subject.as_str()) {
            subjects.push(&e.subject);
        }
    }
    let anyone_open = subjects.iter().any(|s| {
        sorted
            .iter()
            .rfind(|e| e.subject == *s && matches!(e.kind, Kind::Joined | Kind::Left(_)))
            .is_some_and(|e| e.kind == Kind::Joined)
    });
    let end = match (ended_at_ms, start) {
        (_, None) => None,
        (Some(t), _) => Some(t),
        (None, _) if anyone_open => Some(now_ms),
        (None, _) => sorted.last().map(|e| e.at_ms),
    };
    let (start_v, end_v) = (start.unwrap_or(0), end.unwrap_or(0));
    let duration = (end_v - start_v).max(0);

    let mut members = Vec::new();
    let mut sites = Vec::new();
    for subject in &subjects {
        let mine: Vec<&Event> = sorted
            .iter()
            .filter(|e| e.subject == *subject)
            .copied()
            .collect();
        let first = mine[0];
        let invite = invites.get(&first.invite_id).cloned().unwrap_or_default();
        let named = !invite.open && first.role != Role::Interpreter && !first.role.is_equipment();
        let spans = intervals(&mine, start_v, end_v);
        let present: i64 = spans.iter().map(|(s, e)| e - s).sum();
        // Never negative, and never the "-0.0" that JSON readers show as minus zero.
        let pct = if duration > 0 {
            (present as f64 * 100.0 / duration as f64).max(0.0) + 0.0
        } else {
            0.0
        };
        let last_left = mine.iter().rev().find(|e| matches!(e.kind, Kind::Left(_)));
        let still_open = mine
            .iter()
            .rfind(|e| matches!(e.kind, Kind::Joined | Kind::Left(_)))
            .is_some_and(|e| e.kind == Kind::Joined);
        members.push(MemberSummary {
            subject: subject.to_string(),
            role: first.role,
            name: if named { invite.name.clone() } else { None },
            relative_of: if named {
                invite.relative_of.clone()
            } else {
                None
            },
            first_join_ms: mine
                .iter()
                .find(|e| e.kind == Kind::Joined)
                .map_or(first.at_ms, |e| e.at_ms),
            last_leave_ms: if still_open {
                None
            } else {
                last_left.map(|e| e.at_ms)
            },
            present_ms: present,
            presence_pct: (pct * 10.0).round() / 10.0,
            meets_threshold: duration > 0
                && present as f64 * 100.0 >= threshold_pct * duration as f64,
            joins: mine.iter().filter(|e| e.kind == Kind::Joined).count() as u32,
            closed_by_recovery: mine.iter().any(|e| e.by_recovery),
        });
        if first.role == Role::Site {
            sites.push(site_summary(subject, &mine, &spans, invite.name.clone()));
        }
    }
    let present = |m: &&MemberSummary| m.present_ms > 0;
    let named_participants: Vec<&MemberSummary> = members
        .iter()
        .filter(|m| m.role == Role::Participant && m.name.is_some())
        .filter(present)
        .collect();
    SessionSummary {
        actual_start_ms: start,
        actual_end_ms: end,
        duration_ms: duration,
        threshold_pct,
        named_participants: named_participants.len() as u32,
        named_participants_meeting_threshold: named_participants
            .iter()
            .filter(|m| m.meets_threshold)
            .count() as u32,
        open_viewers: members
            .iter()
            .filter(|m| m.role == Role::Participant && m.name.is_none())
            .filter(present)
            .count() as u32,
        interpreters: members
            .iter()
            .filter(|m| m.role == Role::Interpreter)
            .filter(present)
            .count() as u32,
        equipment: members
            .iter()
            .filter(|m| m.role.is_equipment())
            .filter(present)
            .count() as u32,
        members,
        sites,
    }
}

fn site_summary(
    subject: &str,
    mine: &[&Event],
    spans: &[(i64, i64)],
    name: Option<String>,
) -> SiteSummary {
    let reports: Vec<(i64, u32)> = mine
        .iter()
        .filter_map(|e| match e.kind {
            Kind::Headcount(n) => Some((e.at_ms, n)),
            _ => None,
        })
        .collect();
    let max = reports.iter().map(|(_, n)| *n).max();
    // Integrate the reported count over the time the site was present, from its first report.
    let (mut weighted, mut total) = (0.0f64, 0i64);
    for &(s, e) in spans {
        for (i, &(t, n)) in reports.iter().enumerate() {
            let until = reports.get(i + 1).map_or(i64::MAX, |(next, _)| *next);
            let (a, b) = (s.max(t), e.min(until));
            if b > a {
                weighted += n as f64 * (b - a) as f64;
                total += b - a;
            }
        }
    }
    SiteSummary {
        subject: subject.to_owned(),
        name,
        max_headcount: max,
        mean_headcount: (total > 0)
            .then(|| ((weighted / total as f64) * 10.0).round() / 10.0 + 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn ev(subject: &str, role: Role, kind: Kind, minute: i64) -> Event {
        Event {
            subject: subject.into(),
            invite_id: subject.into(),
            role,
            kind,
            at_ms: minute * MIN,
            by_recovery: false,
        }
    }

    fn invites(list: &[(&str, Option<&str>, bool)]) -> HashMap<String, InviteInfo> {
        list.iter()
            .map(|(id, name, open)| {
                (
                    id.to_string(),
                    InviteInfo {
                        name: name.map(str::to_owned),
                        relative_of: None,
                        open: *open,
                    },
                )
            })
            .collect()
    }

    fn member<'a>(s: &'a SessionSummary, subject: &str) -> &'a MemberSummary {
        s.members.iter().find(|m| m.subject == subject).unwrap()
    }

    use Kind::*;

    #[test]
    fn rejoins_are_merged_and_presence_is_a_share_of_the_actual_duration() {
        // Leader 0–100 (ended at 100). Kari 5–50, drops, back 52–100: 93 of 100 minutes.
        let events = vec![
            ev("lead", Role::Leader, Joined, 0),
            ev("kari", Role::Participant, Joined, 5),
            ev("kari", Role::Participant, Left(LeftReason::Dropped), 50),
            ev("kari", Role::Participant, Joined, 52),
            // A reconnect that replaced the old connection: a second join while present.
            ev("kari", Role::Participant, Joined, 60),
            ev("per", Role::Participant, Joined, 10),
            ev("per", Role::Participant, Left(LeftReason::Left), 30),
        ];
        let s = summarise(
            &events,
            &invites(&[("kari", Some("Kari"), false), ("per", Some("Per"), false)]),
            Some(100 * MIN),
            999 * MIN,
            80.0,
        );
        assert_eq!(
            (s.actual_start_ms, s.actual_end_ms, s.duration_ms),
            (Some(0), Some(100 * MIN), 100 * MIN)
        );
        let kari = member(&s, "kari");
        assert_eq!(kari.present_ms, 93 * MIN);
        assert_eq!(
            (kari.presence_pct, kari.meets_threshold, kari.joins),
            (93.0, true, 3)
        );
        assert_eq!((kari.first_join_ms, kari.last_leave_ms), (5 * MIN, None));
        let per = member(&s, "per");
        assert_eq!(
            (per.present_ms, per.presence_pct, per.meets_threshold),
            (20 * MIN, 20.0, false)
        );
        assert_eq!(per.last_leave_ms, Some(30 * MIN));
        assert_eq!(
            (s.named_participants, s.named_participants_meeting_threshold),
            (2, 1)
        );
    }

    #[test]
    fn threshold_at_the_edges() {
        // 100-minute session; presence 79.99…, exactly 80 and 80.01 %.
        for (left_ms, meets) in [
            (80 * MIN - 1, false),
            (80 * MIN, true),
            (80 * MIN + 1, true),
        ] {
            let mut leave = ev("k", Role::Participant, Left(LeftReason::Left), 0);
            leave.at_ms = left_ms;
            let events = vec![
                ev("l", Role::Leader, Joined, 0),
                ev("k", Role::Participant, Joined, 0),
                leave,
            ];
            let s = summarise(&events, &HashMap::new(), Some(100 * MIN), 0, 80.0);
            assert_eq!(member(&s, "k").meets_threshold, meets, "{left_ms}");
        }
        // A custom threshold.
        let events = vec![
            ev("l", Role::Leader, Joined, 0),
            ev("k", Role::Participant, Joined, 0),
            ev("k", Role::Participant, Left(LeftReason::Left), 50),
        ];
        assert!(
            member(
                &summarise(&events, &HashMap::new(), Some(100 * MIN), 0, 50.0),
                "k"
            )
            .meets_threshold
        );
        assert!(
            !member(
                &summarise(&events, &HashMap::new(), Some(100 * MIN), 0, 50.1),
                "k"
            )
            .meets_threshold
        );
    }

    #[test]
    fn presence_is_clipped_to_the_session_and_open_intervals_run_to_now() {
        // Kari arrives before the leader (waiting early) and is still there: the session has
        // not ended, so it runs to `now`.
        let events = vec![
            ev("k", Role::Participant, Joined, 0),
            ev("l", Role::Leader, Joined, 10),
        ];
        let s = summarise(&events, &HashMap::new(), None, 70 * MIN, 80.0);
        assert_eq!(
            (s.actual_start_ms, s.duration_ms),
            (Some(10 * MIN), 60 * MIN)
        );
        assert_eq!(member(&s, "k").present_ms, 60 * MIN);
        assert_eq!(member(&s, "k").presence_pct, 100.0);
        // Nobody joined: no duration, nobody present.
        let empty = summarise(&[], &HashMap::new(), None, 5, 80.0);
        assert_eq!((empty.duration_ms, empty.members.len()), (0, 0));
    }

    #[test]
    fn interpreters_and_open_viewers_are_counted_not_named_relatives_are_linked() {
        let mut inv = invites(&[
            ("tolk", Some("Siri"), false),
            ("open-1", None, true),
            ("kari", Some("Kari"), false),
        ]);
        inv.insert(
            "nils".into(),
            InviteInfo {
                name: Some("Nils".into()),
                relative_of: Some("kari".into()),
                open: false,
            },
        );
        inv.insert(
            "hall".into(),
            InviteInfo {
                name: Some("Auditoriet, koder".into()),
                relative_of: None,
                open: false,
            },
        );
        let mut viewer = ev("open-1-abc", Role::Participant, Joined, 0);
        viewer.invite_id = "open-1".into();
        let events = vec![
            ev("l", Role::Leader, Joined, 0),
            ev("hall", Role::Encoder, Joined, 0),
            ev("asr", Role::Captioner, Joined, 0),
            ev("tolk", Role::Interpreter, Joined, 0),
            viewer,
            ev("kari", Role::Participant, Joined, 0),
            ev("nils", Role::Participant, Joined, 0),
        ];
        let s = summarise(&events, &inv, Some(10 * MIN), 0, 80.0);
        assert_eq!(member(&s, "tolk").name, None);
        assert_eq!(member(&s, "open-1-abc").name, None);
        assert_eq!(member(&s, "nils").relative_of.as_deref(), Some("kari"));
        assert_eq!(
            (s.named_participants, s.open_viewers, s.interpreters),
            (2, 1, 1)
        );
        // Hall equipment: counted as equipment, never named, never a participant.
        assert_eq!(s.equipment, 2);
        assert_eq!(member(&s, "hall").name, None);
    }

    #[test]
    fn site_headcount_is_time_weighted_over_its_presence() {
        // Volda present 0–60: 10 people for 30 minutes, then 4 for 30 → mean 7, max 10.
        // A report before joining and one after leaving do not weigh.
        let events = vec![
            ev("l", Role::Leader, Joined, 0),
            ev("volda", Role::Site, Joined, 0),
            ev("volda", Role::Site, Headcount(10), 0),
            ev("volda", Role::Site, Headcount(4), 30),
            ev("volda", Role::Site, Left(LeftReason::Dropped), 60),
            ev("volda", Role::Site, Headcount(50), 70),
            ev("molde", Role::Site, Joined, 0),
        ];
        let s = summarise(
            &events,
            &invites(&[("volda", Some("Volda"), false)]),
            Some(90 * MIN),
            0,
            80.0,
        );
        let volda = s.sites.iter().find(|x| x.subject == "volda").unwrap();
        assert_eq!(
            (volda.max_headcount, volda.mean_headcount),
            (Some(50), Some(7.0))
        );
        assert_eq!(volda.name.as_deref(), Some("Volda"));
        let molde = s.sites.iter().find(|x| x.subject == "molde").unwrap();
        assert_eq!((molde.max_headcount, molde.mean_headcount), (None, None));
    }
}

//! Attendance through the real server: events are committed before members are told, exports
//! say what registration staff need and only to whom they may, retention deletes exactly the
//! old sessions. (Summaries at the edges: unit tests in src/attendance/summary.rs; the crash:
//! tests/crash.rs.)

mod common;

use std::time::Duration;

use common::*;
use kursrelay::attendance::{self, Event, Kind, LeftReason, Record};
use kursrelay::protocol::Role;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(server: &TestServer, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status = resp[9..12].parse().unwrap();
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

async fn kinds(server: &TestServer, label: &str) -> Vec<(String, Kind)> {
    let session = server.session(label).await;
    attendance::events(&server.state.db, &session)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.subject, e.kind))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_committed_before_joined_and_exports_are_for_the_leader_only() {
    let server = TestServer::spawn().await;
    let (leader_invite, leader_token) = server
        .token_with("att", Role::Leader, Some("Ola"), false, None)
        .await;
    let leader = TestPeer::connect(&server, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let (kari_invite, kari_token) = server
        .token_with("att", Role::Participant, Some("Kari"), false, None)
        .await;
    let kari = TestPeer::connect(&server, &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    // Acknowledged = committed: the event is there the moment `joined` arrived.
    assert!(kinds(&server, "att")
        .await
        .contains(&(kari_invite.clone(), Kind::Joined)));

    let (nils_invite, nils_token) = server
        .token_with(
            "att",
            Role::Participant,
            Some("Nils"),
            false,
            Some(kari_invite.clone()),
        )
        .await;
    let nils = TestPeer::connect(&server, &nils_token, None).await;
    nils.wait_msg(|m| m["type"] == "joined").await;
    let site_token = server
        .token("att", Role::Site, Some("Volda sjukehus"), false)
        .await;
    let site = TestPeer::connect(&server, &site_token, None).await;
    site.wait_msg(|m| m["type"] == "joined").await;
    site.send(json!({"type": "set_headcount", "count": 7}))
        .await;
    site.wait_msg(|m| m["type"] == "ok").await;
    let tolk = TestPeer::join_as(&server, "att", Role::Interpreter, "Siri Tolk").await;
    let rep_token = server
        .token("att", Role::Representative, Some("Eva"), false)
        .await;
    let rep = TestPeer::connect(&server, &rep_token, None).await;
    rep.wait_msg(|m| m["type"] == "joined").await;
    let open = server.token("att", Role::Participant, None, true).await;
    let viewer = TestPeer::connect(&server, &open, Some("Anonym Per")).await;
    viewer.wait_msg(|m| m["type"] == "lobby").await;
    leader
        .send(json!({"type": "admit", "member_id": viewer.member_id}))
        .await;
    let admitted = viewer.wait_msg(|m| m["type"] == "joined").await;
    // The open-link viewer's network drops; the page comes back with its rejoin credential:
    // the same person, one row in the export.
    viewer.close().await;
    let rejoin = admitted["rejoin_token"].as_str().unwrap();
    let viewer = TestPeer::connect(&server, rejoin, None).await;
    viewer.wait_msg(|m| m["type"] == "joined").await;
    leader
        .send(json!({"type": "grant_floor", "member_id": kari.member_id}))
        .await;
    kari.wait_msg(|m| m["type"] == "floor").await;

    // Nils leaves on purpose: `bye` comes after his `left` is committed.
    nils.leave().await;
    nils.wait_msg(|m| m["type"] == "bye").await;
    let logged = kinds(&server, "att").await;
    assert!(
        logged.contains(&(nils_invite.clone(), Kind::Left(LeftReason::Left))),
        "{logged:?}"
    );
    assert!(logged.contains(&(kari_invite.clone(), Kind::FloorGranted)));
    assert!(logged.iter().any(|(_, k)| *k == Kind::Headcount(7)));
    assert!(logged.iter().any(|(_, k)| *k == Kind::Admitted));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let session = server.session("att").await;
    let path = format!("/api/sessions/{session}/attendance?format=csv");
    let (status, csv) = get(&server, &path, Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{csv}");
    // For a spreadsheet set to Norwegian: a byte-order mark, `;` between fields, and the
    // headers and words in bokmål (issue 21: they were English).
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "{}{}",
            attendance::export::BOM,
            attendance::export::CSV_COLUMNS_NB.join(";")
        )
    );
    assert!(lines[0].contains("oppfyller_kravet"), "{}", lines[0]);
    let row = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle}:\n{csv}"))
            .to_string()
    };
    let kari_row = row(&kari_invite);
    assert!(
        kari_row.contains(";person;") && kari_row.contains(";deltaker;Kari;"),
        "{kari_row}"
    );
    assert!(
        row(&nils_invite).contains(&format!(";Nils;{kari_invite};")),
        "relative linked"
    );
    // Local time (Europe/Oslo by default), decimal commas.
    let fields: Vec<&str> = kari_row.split(';').collect();
    let oslo = attendance::tz::Zone::load("Europe/Oslo").unwrap();
    let now = attendance::now_ms();
    assert!(
        fields[8] >= oslo.format_ms(now - 120_000).as_str()
            && fields[8] <= oslo.format_ms(now).as_str(),
        "first_join is not Oslo time: {kari_row}"
    );
    assert!(
        fields[10].contains(',') && fields[11].contains(','),
        "{kari_row}"
    );
    let open_rows: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains(";person;") && l.contains(";deltaker;;"))
        .collect();
    assert_eq!(open_rows.len(), 1, "{csv}");
    assert_eq!(open_rows[0].split(';').nth(13), Some("2"), "{csv}");
    assert!(
        !csv.contains("Siri") && !csv.contains("Anonym"),
        "interpreters and open viewers are counted, not named:\n{csv}"
    );
    // The session's date column is its start's day in the configured zone (Europe/Oslo).
    let starts_at = server.state.db.session(&session).await.unwrap().starts_at;
    let day = starts_at
        .parse::<jiff::Timestamp>()
        .unwrap()
        .in_tz("Europe/Oslo")
        .unwrap()
        .date();
    assert!(
        csv.lines().any(|l| l.contains(&format!(";{day};rom;"))
            && l.contains(";rom;Volda sjukehus;")
            && l.ends_with(";7;7,0")),
        "{csv}"
    );

    // Yes and no in Norwegian: Kari was there all along, nobody was closed by recovery.
    assert_eq!(fields[12], "ja", "{kari_row}");
    assert_eq!(fields[14], "nei", "{kari_row}");
    assert!(
        !csv.contains(";yes;") && !csv.contains(";no;") && !csv.contains(";member;"),
        "{csv}"
    );
    // For scripts: `lang=en`, the columns of docs/api.md under their English names.
    let (status, en) = get(&server, &format!("{path}&lang=en"), Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{en}");
    let en_lines: Vec<&str> = en.lines().collect();
    assert_eq!(
        en_lines[0],
        format!(
            "{}{}",
            attendance::export::BOM,
            attendance::export::CSV_COLUMNS.join(";")
        )
    );
    let kari_en = en_lines.iter().find(|l| l.contains(&kari_invite)).unwrap();
    assert!(
        kari_en.contains(";member;")
            && kari_en.contains(";participant;Kari;")
            && kari_en.contains(";yes;"),
        "{kari_en}"
    );
    let (status, body) = get(&server, &format!("{path}&lang=de"), Some(ADMIN_KEY)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("lang must be nb or en"), "{body}");
    // docs/api.md names every column, in both languages, in order.
    let doc = include_str!("../docs/api.md");
    for (en, nb) in attendance::export::CSV_COLUMNS
        .iter()
        .zip(attendance::export::CSV_COLUMNS_NB.iter())
    {
        assert!(
            doc.contains(&format!("`{en}` (`{nb}`)")),
            "docs/api.md lacks `{en}` (`{nb}`)"
        );
    }

    let (_, json) = get(
        &server,
        &format!("/api/sessions/{session}/attendance?format=json"),
        Some(&leader_token),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (
            json["named_participants"].clone(),
            json["open_viewers"].clone(),
            json["interpreters"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(json["threshold_pct"], 80.0);
    // docs/api.md's table lists exactly the fields the export has (issue 21: `equipment` was
    // missing).
    let mut keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, doc_fields("### JSON export"));

    // Everyone else: refused.
    assert_eq!(get(&server, &path, Some(&kari_token)).await.0, 403);
    assert_eq!(get(&server, &path, Some(&rep_token)).await.0, 403);
    assert_eq!(get(&server, &path, Some(&site_token)).await.0, 403);
    assert_eq!(get(&server, &path, None).await.0, 401);
    assert_eq!(get(&server, &path, Some("forged.token.here")).await.0, 401);
    let other_leader = server
        .token("att-other", Role::Leader, Some("Anna"), false)
        .await;
    assert_eq!(get(&server, &path, Some(&other_leader)).await.0, 403);

    // Every export is audited, and the audit is the admin's.
    let (status, audit) = get(&server, "/api/exports", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let by: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["requested_by"].as_str().unwrap())
        .collect();
    // The English CSV was an export too; the refused `lang=de` was not.
    assert_eq!(
        by,
        [format!("leader:{leader_invite}").as_str(), "admin", "admin"]
    );
    assert_eq!(
        get(&server, "/api/exports", Some(&leader_token)).await.0,
        401
    );
    // Participants never receive attendance data over the socket either.
    assert!(serde_json::to_string(&kari.inbox())
        .unwrap()
        .find("presence")
        .is_none());
    drop((rep, tolk, site, viewer));
    server.shutdown().await;
}

/// The backticked names in the first column of the table under `heading` in docs/api.md,
/// sorted.
fn doc_fields(heading: &str) -> Vec<String> {
    let doc = include_str!("../docs/api.md");
    let section = doc.split(heading).nth(1).expect("heading in docs/api.md");
    let section = section.split("\n#").next().unwrap();
    let mut names: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let cell = l.split('|').nth(1).unwrap();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names
}

fn event(subject: &str, kind: Kind, at_ms: i64) -> Event {
    Event {
        subject: subject.into(),
        invite_id: subject.into(),
        role: Role::Participant,
        kind,
        at_ms,
        by_recovery: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_sessions_past_it() {
    // The server's own retention run (at start, then hourly) keeps ten years here, so it never
    // races this test's purge for the sessions the test ages by hand.
    let server = TestServer::spawn_with("[attendance]\nretention_days = 3650").await;
    let db = &server.state.db;
    let writer = attendance::Attendance::spawn(db.clone());
    let day = 86_400_000i64;
    let now = attendance::now_ms();
    let mut ids = Vec::new();
    for (label, ended_days_ago) in [
        ("old", Some(181)),
        ("edge", Some(179)),
        ("recent", Some(10)),
        ("running", None),
    ] {
        let id = server.session(label).await;
        for (i, kind) in [Kind::Joined, Kind::Left(LeftReason::Left)]
            .into_iter()
            .enumerate()
        {
            writer
                .record(Record {
                    session_id: id.clone(),
                    event: event("p", kind, now - 200 * day + i as i64),
                })
                .await
                .unwrap();
        }
        if let Some(days) = ended_days_ago {
            db.advance_session(&id, kursrelay::db::SessionState::Ended)
                .await
                .unwrap();
            sqlx::query("UPDATE sessions SET ended_at = $1 WHERE id = $2")
                .bind((now - days * day) / 1000)
                .bind(&id)
                .execute(db.pool())
                .await
                .unwrap();
        }
        ids.push(id);
    }
    let (sessions, events) = attendance::purge(db, now, Duration::from_secs(180 * 86_400))
        .await
        .unwrap();
    assert_eq!((sessions, events), (1, 2));
    for (id, kept) in ids.iter().zip([false, true, true, true]) {
        assert_eq!(
            !attendance::events(db, id).await.unwrap().is_empty(),
            kept,
            "{id}"
        );
    }
    // Running it again deletes nothing more.
    assert_eq!(
        attendance::purge(db, now, Duration::from_secs(180 * 86_400))
            .await
            .unwrap(),
        (0, 0)
    );
    server.shutdown().await;
}

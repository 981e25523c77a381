//! The store itself, on whichever backend the run uses (SQLite, or PostgreSQL with
//! `KURSRELAY_TEST_DB=postgres`): what the two must do alike where their concurrency differs.

mod common;

use std::time::Duration;

use kursrelay::attendance::{self, Attendance, Event, Kind, Record};
use kursrelay::db::{Db, NewInvite, NewSession};
use kursrelay::protocol::Role;

async fn open() -> (tempfile::TempDir, String, Db) {
    let dir = tempfile::tempdir().unwrap();
    let section = common::pg::db_section(dir.path()).await;
    let db = common::pg::open_section(&section).await;
    assert_eq!(db.is_postgres(), common::pg::enabled());
    (dir, section, db)
}

async fn session(db: &Db) -> String {
    let course = db.create_course("Lagringskurs").await.unwrap();
    db.create_session(
        &course.id,
        &NewSession {
            title: "Dag 1".into(),
            starts_at: common::utc_in(-3600),
            ends_at: common::utc_in(3600),
            host_site: "Molde".into(),
            chat_enabled: false,
            roster: Default::default(),
        },
    )
    .await
    .unwrap()
    .id
}

/// Opening again (a restart, or a second node) applies no migration twice; nodes starting at
/// once wait for each other.
#[tokio::test]
async fn migrations_run_once_even_when_opened_at_once() {
    let (_dir, section, db) = open().await;
    let again =
        futures_util::future::join_all((0..4).map(|_| common::pg::open_section(&section))).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n as usize, kursrelay::db::MIGRATIONS.len());
    // The join-token key is one key for every node.
    let key = db.secret("join_token_key").await.unwrap();
    for other in &again {
        assert_eq!(other.secret("join_token_key").await.unwrap(), key);
    }
}

/// Twenty people arriving at once get the numbers 1–20, each once.
#[tokio::test]
async fn participant_numbers_are_unique_under_a_join_storm() {
    let (_dir, _section, db) = open().await;
    let sid = session(&db).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (db, sid) = (db.clone(), sid.clone());
            tokio::spawn(async move { db.participant_number(&sid, &format!("s{i}")).await })
        })
        .collect();
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap().unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=20).collect::<Vec<u32>>());
    // And the same person keeps theirs.
    assert_eq!(
        db.participant_number(&sid, "s3").await.unwrap(),
        db.participant_number(&sid, "s3").await.unwrap()
    );
}

/// Invites made in the same second are listed in the order they were made (SQLite's rowid;
/// PostgreSQL's identity column of the same name).
#[tokio::test]
async fn listings_keep_the_order_of_creation() {
    let (_dir, _section, db) = open().await;
    let sid = session(&db).await;
    let new: Vec<NewInvite> = (0..30)
        .map(|i| NewInvite {
            role: Role::Participant,
            display_name: Some(format!("Person {i:02}")),
            relative_of: None,
            open: false,
        })
        .collect();
    let made = db.create_invites(&sid, &new).await.unwrap();
    let listed = db.invites(&sid).await.unwrap();
    let ids = |v: &[kursrelay::db::Invite]| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&listed), ids(&made));
    assert_eq!(listed[7].display_name.as_deref(), Some("Person 07"));
}

/// Acknowledged means committed: every event acknowledged is read back, and last-seen times
/// only move forward (what crash recovery closes intervals at).
#[tokio::test]
async fn acknowledged_events_are_committed_and_last_seen_only_moves_forward() {
    let (_dir, _section, db) = open().await;
    let sid = session(&db).await;
    let writer = Attendance::spawn(db.clone());
    let base = attendance::now_ms();
    let mut acks = Vec::new();
    for i in 0..200 {
        acks.push(writer.record(Record {
            session_id: sid.clone(),
            event: Event {
                subject: format!("s{}", i % 10),
                invite_id: format!("s{}", i % 10),
                role: Role::Participant,
                kind: if i < 10 {
                    Kind::Joined
                } else {
                    Kind::Headcount(i)
                },
                at_ms: base + i as i64,
                by_recovery: false,
            },
        }));
    }
    for a in acks {
        tokio::time::timeout(Duration::from_secs(20), a)
            .await
            .expect("acknowledged in time")
            .expect("committed");
    }
    assert_eq!(attendance::events(&db, &sid).await.unwrap().len(), 200);
    // An older "seen" after a newer one changes nothing.
    writer.seen(sid.clone(), vec!["s1".into()], base + 10_000);
    writer.seen(sid.clone(), vec!["s1".into()], base + 5_000);
    assert!(writer.flush().await);
    let seen: i64 = sqlx::query_scalar(
        "SELECT last_seen_ms FROM attendance_seen WHERE session_id = $1 AND subject = $2",
    )
    .bind(&sid)
    .bind("s1")
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(seen, base + 10_000);
    // Recovery closes the ten open intervals at their last-seen times.
    assert_eq!(attendance::recover(&db).await.unwrap(), 10);
    let events = attendance::events(&db, &sid).await.unwrap();
    let closed = events
        .iter()
        .find(|e| e.subject == "s1" && e.by_recovery)
        .unwrap();
    assert_eq!(closed.at_ms, base + 10_000);
    assert_eq!(attendance::recover(&db).await.unwrap(), 0);
}

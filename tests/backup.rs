//! `kursrelay db backup FILE` (the real binary, SQLite's online backup) while the real server
//! keeps writing attendance: every copy is a consistent database (integrity check, all
//! migrations), holds the events committed before it started, and later copies hold more.
//! Bad destinations get clear errors.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use kursrelay::protocol::Role;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row};

fn backup_cmd(db: &Path, dest: &Path, dir: &Path) -> std::process::Output {
    let config = dir.join("backup.toml");
    std::fs::write(&config, format!("[db]\npath = \"{}\"\n", db.display())).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kursrelay"))
        .arg("--config")
        .arg(&config)
        .args(["db", "backup"])
        .arg(dest)
        .output()
        .unwrap()
}

/// (integrity_check result, attendance events, migrations applied) of a database file.
async fn inspect(path: &Path) -> (String, i64, i64) {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let check: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attendance_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let migrations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (check, events, migrations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_while_the_server_writes_attendance_are_consistent() {
    let server = TestServer::spawn().await;
    let db = server.dir.path().join("kursrelay.db");
    let out = tempfile::tempdir().unwrap();

    // People keep joining and leaving: every join and leave is an attendance event.
    let stop = Arc::new(AtomicBool::new(false));
    let joins = Arc::new(AtomicU64::new(0));
    let mut tokens = Vec::new();
    for i in 0..40 {
        tokens.push(
            server
                .token("backup", Role::Participant, Some(&format!("P{i}")), false)
                .await,
        );
    }
    let server = Arc::new(server);
    let writer = {
        let (server, stop, joins) = (server.clone(), stop.clone(), joins.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut ws = WsClient::connect(&server).await;
                let joined = ws.hello_join(&tokens[i % tokens.len()]).await;
                assert_eq!(joined["type"], "joined");
                joins.fetch_add(1, Ordering::SeqCst);
                ws.close().await;
                i += 1;
            }
        })
    };
    assert!(wait_until(TIMEOUT, || joins.load(Ordering::SeqCst) >= 5).await);

    let mut last = 0;
    for n in 0..4 {
        let before = joins.load(Ordering::SeqCst) as i64;
        let dest = out.path().join(format!("copy-{n}.db"));
        let (db2, dest2, dir2) = (db.clone(), dest.clone(), out.path().to_owned());
        let result = tokio::task::spawn_blocking(move || backup_cmd(&db2, &dest2, &dir2))
            .await
            .unwrap();
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(String::from_utf8_lossy(&result.stdout).contains("backed up"));
        // One self-contained file: no WAL or journal left beside it.
        assert!(!out.path().join(format!("copy-{n}.db-wal")).exists());
        let (check, events, migrations) = inspect(&dest).await;
        assert_eq!(check, "ok");
        assert_eq!(
            migrations,
            inspect(&db).await.2,
            "not every migration in copy {n}"
        );
        // Every join acknowledged before the backup began is in it (committed before acked).
        assert!(
            events >= before,
            "copy {n}: {events} events, {before} joins before"
        );
        assert!(
            events > last,
            "copy {n} has no more than the one before ({events})"
        );
        last = events;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    // Bad input: clear errors, nothing written.
    let taken = out.path().join("copy-0.db");
    let cases = [
        (db.clone(), taken, "already exists"),
        (
            db.clone(),
            out.path().join("no/such/folder/x.db"),
            "does not exist",
        ),
        (
            out.path().join("missing.db"),
            out.path().join("y.db"),
            "there is no database",
        ),
    ];
    for (src, dest, want) in cases {
        let result = backup_cmd(&src, &dest, out.path());
        assert_eq!(result.status.code(), Some(1), "{dest:?}");
        let err = String::from_utf8_lossy(&result.stderr);
        assert!(err.contains(want), "{dest:?}: {err}");
    }
    assert!(!out.path().join("y.db").exists());
    assert!(
        !out.path().join("missing.db").exists(),
        "a backup created its source"
    );
    Arc::try_unwrap(server)
        .ok()
        .expect("one owner")
        .shutdown()
        .await;
}

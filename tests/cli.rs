//! The real binary: a bad config stops start-up with a message naming the key; a good one
//! serves, and SIGINT (Ctrl-C) shuts it down cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server if the test fails half-way, so no process outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An RFC 3339 UTC time `secs` from now: sessions are created for tomorrow, never for a
/// calendar day that stops lying ahead (issue 23).
fn utc_in(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(secs))
        .to_string()
}

const DAY: u64 = 24 * 3600;

fn kursrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kursrelay"))
}

/// Only the PostgreSQL part of the harness (tests/common/pg.rs and tools.rs), not the media
/// client: these tests drive the binary.
#[allow(dead_code)]
mod common {
    pub mod pg;
    pub mod tools;
    pub mod wait;
}

/// The `[db]` section: SQLite in `dir`, or with `KURSRELAY_TEST_DB=postgres` a fresh
/// PostgreSQL database.
fn db_section(dir: &std::path::Path) -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::pg::db_section(dir))
}

#[test]
fn unknown_key_or_bad_value_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[http]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
            "http.lisen",
        ),
        ("[media]\nbind_ips = [\"not an ip\"]\n", "media.bind_ips"),
        (
            "[signalling]\nmessages_per_second = 0\n",
            "signalling.messages_per_",
        ),
        ("[log]\nfilter = 3\n", "log.filter"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = kursrelay().arg("--config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
    let out = kursrelay()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn serves_and_shuts_down_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nweb_root = \"{}/web\"\n[media]\nudp_port = 0\n[log]\nfilter = \"info\"\n{}",
            env!("CARGO_MANIFEST_DIR"),
            db_section(dir.path())
        ),
    )
    .unwrap();
    let mut child = kursrelay()
        .arg("--config")
        .arg(&path)
        .env_remove("KURSRELAY_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let child = &mut child.0;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("no 'listening' line");
        if let Some(rest) = line.strip_prefix("kursrelay listening on http://") {
            break rest.trim_end_matches('/').to_owned();
        }
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = common::wait::eventually_blocking(
        "the server stopping after SIGINT",
        Duration::from_secs(15),
        || child.try_wait().unwrap(),
    );
    assert!(code.success(), "{code:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[test]
fn admin_commands_create_a_course_a_session_and_its_links() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("admin.toml");
    std::fs::write(&config, db_section(dir.path())).unwrap();
    let run = |args: &[&str]| {
        let out = kursrelay()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let course = run(&["course", "create", "--title", "Diabetes type 2"]);
    assert_eq!(course.len(), 32, "{course}");
    assert!(run(&["course", "list"]).contains("Diabetes type 2"));
    let session = run(&[
        "session",
        "create",
        "--course",
        &course,
        "--title",
        "Dag 1",
        "--starts",
        &utc_in(DAY),
        "--ends",
        &utc_in(DAY + 3 * 3600),
        "--host-site",
        "Kristiansund sjukehus",
    ]);
    let links = run(&["session", "links", &session, "--defaults"]);
    let lines: Vec<&str> = links.lines().collect();
    assert_eq!(lines.len(), 3, "{links}");
    assert!(
        lines[0].starts_with("leader\t") && lines[0].contains("/course.html#t="),
        "{links}"
    );
    assert!(
        lines[2].starts_with("participant\topen link\t") && lines[2].contains("/course.html#t="),
        "{links}"
    );
    let site = run(&[
        "session",
        "invite",
        &session,
        "--role",
        "site",
        "--name",
        "Volda sjukehus, møterom 2",
    ]);
    let site_invite = site.split('\t').next().unwrap().to_owned();
    assert!(
        !site.contains("Volda"),
        "the printed link must not carry the name: {site}"
    );
    assert_eq!(run(&["session", "links", &session]).lines().count(), 4);
    // A whole list of participants at once: all or none.
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "Kari\n\n  Per Olav \nIngrid\n").unwrap();
    let names = names.display().to_string();
    let made = run(&[
        "session",
        "invite-many",
        &session,
        "--role",
        "participant",
        "--names",
        &names,
    ]);
    let made: Vec<&str> = made.lines().collect();
    assert_eq!(made.len(), 3, "{made:?}");
    assert!(
        made[1].starts_with("Per Olav\t") && made[1].contains("/course.html#t="),
        "{made:?}"
    );
    assert_eq!(run(&["session", "links", &session]).lines().count(), 7);
    let bad_names = dir.path().join("bad.txt");
    std::fs::write(&bad_names, format!("Kari\n{}\n", "x".repeat(70))).unwrap();
    let refused = kursrelay()
        .arg("--config")
        .arg(&config)
        .args([
            "session",
            "invite-many",
            &session,
            "--role",
            "participant",
            "--names",
        ])
        .arg(&bad_names)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invites[1]"));
    assert_eq!(run(&["session", "links", &session]).lines().count(), 7);
    run(&["invite", "revoke", &site_invite]);
    assert_eq!(run(&["session", "links", &session]).lines().count(), 6);
    run(&["session", "end", &session]);
    let out = kursrelay()
        .arg("--config")
        .arg(&config)
        .args(["session", "links", &session])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended"));
    let bad = kursrelay()
        .arg("--config")
        .arg(&config)
        .args(["session", "invite", &session, "--role", "king"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Issue 21: the CLI's attendance CSV is Norwegian like the API's; `--lang en` gives the
/// English column names for scripts, and another language is refused.
#[test]
fn attendance_csv_from_the_cli_in_norwegian_or_english() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(&config, db_section(dir.path())).unwrap();
    let run = |args: &[&str]| {
        let out = kursrelay()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, course, err) = run(&["course", "create", "--title", "Stoffskifte"]);
    assert!(!course.is_empty(), "{err}");
    let (_, session, err) = run(&[
        "session",
        "create",
        "--course",
        &course,
        "--title",
        "Dag 1",
        "--starts",
        &utc_in(DAY),
        "--ends",
        &utc_in(DAY + 3 * 3600),
        "--host-site",
        "Molde",
    ]);
    assert!(!session.is_empty(), "{err}");
    let export = |lang: Option<&str>| {
        let mut args = vec!["attendance", "export", "--session", &session];
        if let Some(l) = lang {
            args.extend(["--lang", l]);
        }
        run(&args)
    };
    let (code, nb, err) = export(None);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        nb.trim_start_matches('\u{feff}')
            .starts_with("økt_id;økt;dato;"),
        "{nb}"
    );
    let (code, en, err) = export(Some("en"));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        en.trim_start_matches('\u{feff}')
            .starts_with("session_id;session_title;"),
        "{en}"
    );
    let (code, _, err) = export(Some("de"));
    assert_eq!(code, Some(2), "{err}");
}

/// Issue 22: a `db.url` that is not a database URL stops start-up (and every admin command)
/// with a message naming `db.url`, never showing the password it may hold.
#[test]
fn a_bad_db_url_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("mysql://kurs:hemmelig@db.example/kurs", "postgres://"),
        (
            "postgres://kurs:hemmelig@db.example",
            "must name a server and a database",
        ),
        ("postgres:///kurs", "must name a server and a database"),
        ("sqlite:", "needs a file name"),
        ("data/kursrelay.db", "is not a database URL"),
    ];
    for (i, (url, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, format!("[db]\nurl = \"{url}\"\n")).unwrap();
        for args in [&[][..], &["course", "list"][..]] {
            let out = kursrelay()
                .arg("--config")
                .arg(&path)
                .args(args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{url} {args:?}: {stderr}");
            assert!(stderr.contains("db.url"), "{url}: {stderr}");
            assert!(stderr.contains(want), "{url}: {stderr}");
            assert!(!stderr.contains("hemmelig"), "password shown: {stderr}");
        }
    }
}

/// A PostgreSQL server that is not there: start-up and the admin commands stop at once with
/// an error naming `db.url` and the server (without its password).
#[test]
fn an_unreachable_postgres_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("down.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nudp_port = 0\n\
             [db]\nurl = \"postgres://kurs:hemmelig@127.0.0.1:{port}/kursrelay\"\n"
        ),
    )
    .unwrap();
    for args in [&[][..], &["course", "list"][..]] {
        let started = Instant::now();
        let out = kursrelay()
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("db.url"), "{stderr}");
        assert!(stderr.contains("cannot be reached"), "{stderr}");
        assert!(
            stderr.contains(&format!("postgres://kurs:***@127.0.0.1:{port}/kursrelay")),
            "{stderr}"
        );
        assert!(!stderr.contains("hemmelig"), "password shown: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(15), "{args:?}");
    }
}

/// `kursrelay db backup` copies SQLite files only; on PostgreSQL it says to use pg_dump and
/// writes nothing.
#[test]
fn db_backup_on_postgres_points_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg.toml");
    std::fs::write(
        &path,
        "[db]\nurl = \"postgres://kurs:hemmelig@db.example:5432/kursrelay\"\n",
    )
    .unwrap();
    let file = dir.path().join("copy.dump");
    let out = kursrelay()
        .arg("--config")
        .arg(&path)
        .args(["db", "backup"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(stderr.contains("db.url"), "{stderr}");
    assert!(!stderr.contains("hemmelig"), "{stderr}");
    assert!(!file.exists());
}

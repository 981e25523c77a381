//! The crash test: the real binary, real peers, SIGKILL mid-session, restart. Every
//! acknowledged attendance event must be there, and the intervals the crash left open must be
//! closed at the members' last-seen time and marked as closed by recovery.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kursrelay::attendance::{self, Kind, LeftReason};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "crash-test-admin-key-0123";

/// The server process; killed when dropped, so a failing test leaves nothing running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &std::path::Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kursrelay"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let server = Server(child);
    let mut addr = None;
    let mut line = String::new();
    // Log lines (e.g. recovery's) may come first.
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(a) = line.trim().strip_prefix("kursrelay listening on http://") {
            addr = Some(a.trim_end_matches('/').to_owned());
            break;
        }
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (
        server,
        addr.expect("the server never said where it listens"),
    )
}

async fn post(addr: &str, path: &str, body: Value) -> Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    s.write_all(format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn token(invite: &Value) -> String {
    invite["link"]
        .as_str()
        .unwrap()
        .split("#t=")
        .nth(1)
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_session_loses_no_acknowledged_event() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db_section = common::pg::db_section(dir.path()).await;
    let config = dir.path().join("crash.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nweb_root = \"{}/web\"\n[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\n\
             [auth]\nadmin_key = \"{KEY}\"\n{db_section}[attendance]\nseen_interval_ms = 200\n[log]\nfilter = \"warn\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let (child, addr) = start(&config);
    let ws = format!("ws://{addr}/ws");

    let course = post(&addr, "/api/courses", json!({"title": "Krasjkurs"})).await;
    let session = post(&addr, &format!("/api/courses/{}/sessions", course["id"].as_str().unwrap()),
        json!({"title": "Dag 1", "starts_at": utc_in(-HOUR), "ends_at": utc_in(DAY), "host_site": "Molde"})).await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let invites = format!("/api/sessions/{sid}/invites");
    let mut people = Vec::new();
    for (role, name) in [
        ("leader", "Ola"),
        ("participant", "Kari"),
        ("participant", "Per"),
        ("site", "Volda"),
    ] {
        people.push(post(&addr, &invites, json!({"role": role, "display_name": name})).await);
    }

    // Everyone joins; `joined` is the acknowledgement of the join event.
    let mut peers = Vec::new();
    for p in &people {
        let peer = TestPeer::connect_url(&ws, &token(p), None).await;
        peer.wait_msg(|m| m["type"] == "joined").await;
        peers.push(peer);
    }
    // Per leaves; `bye` is the acknowledgement of his `left`.
    peers[2].leave().await;
    peers[2].wait_msg(|m| m["type"] == "bye").await;
    peers[3]
        .send(json!({"type": "set_headcount", "count": 4}))
        .await;
    peers[3].wait_msg(|m| m["type"] == "ok").await;
    tokio::time::sleep(Duration::from_millis(700)).await; // a few last-seen updates

    let killed_at = attendance::now_ms();
    drop(child); // SIGKILL

    for p in peers {
        p.close().await;
    }

    // Restart: recovery runs before the server listens.
    let (child, addr) = start(&config);
    let db = common::pg::open_section(&db_section).await;
    let events = attendance::events(&db, &sid).await.unwrap();
    let of = |i: usize| -> Vec<&attendance::Event> {
        events
            .iter()
            .filter(|e| e.invite_id == people[i]["id"].as_str().unwrap())
            .collect()
    };
    for i in 0..4 {
        let mine = of(i);
        assert_eq!(
            mine.iter().filter(|e| e.kind == Kind::Joined).count(),
            1,
            "join of {i} lost: {events:?}"
        );
        let joined_at = mine.iter().find(|e| e.kind == Kind::Joined).unwrap().at_ms;
        let lefts: Vec<&&attendance::Event> = mine
            .iter()
            .filter(|e| matches!(e.kind, Kind::Left(_)))
            .collect();
        assert_eq!(lefts.len(), 1, "{i}: {mine:?}");
        if i == 2 {
            assert_eq!(lefts[0].kind, Kind::Left(LeftReason::Left));
            assert!(!lefts[0].by_recovery);
        } else {
            assert_eq!(lefts[0].kind, Kind::Left(LeftReason::Recovered), "{i}");
            assert!(lefts[0].by_recovery);
            // Closed at the last-seen time: after joining, before the kill, and recent.
            assert!(
                lefts[0].at_ms >= joined_at && lefts[0].at_ms <= killed_at,
                "{i}"
            );
            assert!(
                killed_at - lefts[0].at_ms < 1_000,
                "{i}: last seen {} ms before the kill",
                killed_at - lefts[0].at_ms
            );
        }
    }
    assert!(of(3).iter().any(|e| e.kind == Kind::Headcount(4)));

    // The export after the restart says which intervals recovery closed.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /api/sessions/{sid}/attendance?format=json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let export: Value = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    let recovered = export["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["closed_by_recovery"] == true)
        .count();
    assert_eq!(recovered, 3, "{export}");

    // Nothing is left to recover now.
    drop(child);
    assert_eq!(attendance::recover(&db).await.unwrap(), 0);
}

/// SIGKILL in the middle of a storm of joins: 160 people join, leave and join again as fast
/// as they can. Every join the server acknowledged (`joined` reached the client) and every
/// leave it acknowledged (`bye`) is in the attendance log after the restart; at most the one
/// in flight per person is there without its acknowledgement; every interval the kill left
/// open is closed by recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_join_storm_loses_no_acknowledged_event() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    const PEOPLE: usize = 160;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db_section = common::pg::db_section(dir.path()).await;
    let config = dir.path().join("storm.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\n\
             [auth]\nadmin_key = \"{KEY}\"\n{db_section}[abuse]\nwebsockets_per_address = 1000\n\
             [attendance]\nseen_interval_ms = 200\n[log]\nfilter = \"warn\"\n"
        ),
    )
    .unwrap();
    let (child, addr) = start(&config);
    let ws = format!("ws://{addr}/ws");
    let course = post(&addr, "/api/courses", json!({"title": "Stormkurs"})).await;
    let session = post(&addr, &format!("/api/courses/{}/sessions", course["id"].as_str().unwrap()),
        json!({"title": "Dag 1", "starts_at": utc_in(-HOUR), "ends_at": utc_in(DAY), "host_site": "Molde"})).await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let mut list = vec![json!({"role": "leader", "display_name": "Ola"})];
    list.extend(
        (1..PEOPLE).map(|i| json!({"role": "participant", "display_name": format!("P{i}")})),
    );
    let invites = post(
        &addr,
        &format!("/api/sessions/{sid}/invites/bulk"),
        json!({ "invites": list }),
    )
    .await;
    let invites = invites.as_array().expect("bulk invites").clone();
    assert_eq!(invites.len(), PEOPLE);

    // Everyone at once, over and over: connect, hello, join, leave, until the server dies.
    // Per invite: how many joins (`joined`) and leaves (`bye`) the server acknowledged.
    type Acks = Arc<Mutex<HashMap<String, (u32, u32)>>>;
    let acks: Acks = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for invite in &invites {
        let (ws, acks, total) = (ws.clone(), acks.clone(), total.clone());
        let (id, token) = (invite["id"].as_str().unwrap().to_owned(), token(invite));
        tasks.push(tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            loop {
                let Ok((mut s, _)) = tokio_tungstenite::connect_async(&ws).await else {
                    return;
                };
                let next = async |s: &mut tokio_tungstenite::WebSocketStream<_>| -> Option<Value> {
                    loop {
                        match s.next().await? {
                            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                };
                let send = |v: Value| Message::text(v.to_string());
                if s.send(send(json!({"type": "hello", "version": 1})))
                    .await
                    .is_err()
                    || s.send(send(json!({"type": "join", "token": token})))
                        .await
                        .is_err()
                {
                    return;
                }
                loop {
                    let Some(m) = next(&mut s).await else { return };
                    if m["type"] == "joined" {
                        acks.lock().unwrap().entry(id.clone()).or_default().0 += 1;
                        total.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                if s.send(send(json!({"type": "leave"}))).await.is_err() {
                    return;
                }
                loop {
                    let Some(m) = next(&mut s).await else { return };
                    if m["type"] == "bye" {
                        acks.lock().unwrap().entry(id.clone()).or_default().1 += 1;
                        break;
                    }
                }
            }
        }));
    }
    // Kill it mid-storm.
    assert!(
        wait_until(Duration::from_secs(60), || total.load(Ordering::Relaxed)
            >= 3 * PEOPLE as u64)
        .await,
        "the storm never got going"
    );
    drop(child); // SIGKILL
    for t in tasks {
        let _ = t.await;
    }
    let acks = acks.lock().unwrap().clone();
    let (acked_joins, acked_leaves) = acks.values().fold((0, 0), |(j, l), (a, b)| (j + a, l + b));
    eprintln!(
        "killed mid-storm: {acked_joins} joins and {acked_leaves} leaves of {PEOPLE} people acknowledged"
    );

    let (child, _addr) = start(&config);
    let db = common::pg::open_section(&db_section).await;
    let events = attendance::events(&db, &sid).await.unwrap();
    let (mut logged_joins, mut logged_leaves, mut recovered) = (0u32, 0u32, 0u32);
    for invite in &invites {
        let id = invite["id"].as_str().unwrap();
        let mine: Vec<&attendance::Event> = events.iter().filter(|e| e.invite_id == id).collect();
        let joins = mine.iter().filter(|e| e.kind == Kind::Joined).count() as u32;
        let left = mine
            .iter()
            .filter(|e| e.kind == Kind::Left(LeftReason::Left))
            .count() as u32;
        let closed = mine
            .iter()
            .filter(|e| matches!(e.kind, Kind::Left(_)))
            .count() as u32;
        let (acked_j, acked_l) = acks.get(id).copied().unwrap_or_default();
        // Nothing acknowledged is missing; at most the one join or leave in flight at the kill
        // was written without its acknowledgement reaching the client.
        assert!(
            joins == acked_j || joins == acked_j + 1,
            "joins: {acked_j} acknowledged, {joins} logged: {mine:?}"
        );
        assert!(
            left == acked_l || left == acked_l + 1,
            "leaves: {acked_l} acknowledged, {left} logged: {mine:?}"
        );
        // Every interval is closed: by its leave, or by recovery.
        assert_eq!(closed, joins, "{mine:?}");
        logged_joins += joins;
        logged_leaves += left;
        recovered += closed - left;
    }
    eprintln!(
        "in the log after the restart: {logged_joins} joins, {logged_leaves} leaves, {recovered} intervals closed by recovery"
    );
    drop(child);
    assert_eq!(attendance::recover(&db).await.unwrap(), 0);
}

/// Issue 21: a clean stop (SIGTERM, what systemd sends) closes every open interval itself —
/// each member's `left` is written before the process exits — so the next start has nothing
/// to recover, logs no "left open by a crash", and the export marks nobody
/// `closed_by_recovery`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_open_interval_before_the_process_exits() {
    use std::sync::{Arc, Mutex};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db_section = common::pg::db_section(dir.path()).await;
    let config = dir.path().join("term.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\n\
             [auth]\nadmin_key = \"{KEY}\"\n{db_section}[attendance]\nseen_interval_ms = 200\n[log]\nfilter = \"info\"\n"
        ),
    )
    .unwrap();
    // Like `start`, keeping the log (stderr) to read.
    let start_logged = |config: &std::path::Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kursrelay"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let err = BufReader::new(child.stderr.take().unwrap());
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut addr = None;
        while out.read_line(&mut line).unwrap() > 0 {
            if let Some(a) = line.trim().strip_prefix("kursrelay listening on http://") {
                addr = Some(a.trim_end_matches('/').to_owned());
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        (Server(child), addr.expect("no listen line"), log)
    };
    let (mut child, addr, _) = start_logged(&config);
    let ws = format!("ws://{addr}/ws");
    let course = post(&addr, "/api/courses", json!({"title": "Stoppkurs"})).await;
    let session = post(&addr, &format!("/api/courses/{}/sessions", course["id"].as_str().unwrap()),
        json!({"title": "Dag 1", "starts_at": utc_in(-HOUR), "ends_at": utc_in(DAY), "host_site": "Molde"})).await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let invites = format!("/api/sessions/{sid}/invites");
    let mut peers = Vec::new();
    for (role, name) in [
        ("leader", "Ola"),
        ("participant", "Kari"),
        ("participant", "Per"),
        ("site", "Volda"),
    ] {
        let invite = post(&addr, &invites, json!({"role": role, "display_name": name})).await;
        let peer = TestPeer::connect_url(&ws, &token(&invite), None).await;
        peer.wait_msg(|m| m["type"] == "joined").await;
        peers.push(peer);
    }
    // Nobody sends media: nothing but the members themselves keeps the stop waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopped_at = attendance::now_ms();
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = eventually_some(
        "the server stopping after SIGTERM",
        Duration::from_secs(10),
        || child.0.try_wait().unwrap(),
    )
    .await;
    assert!(status.success(), "{status:?}");
    for p in &peers {
        p.wait_msg(|m| m["type"] == "bye" && m["reason"] == "server_shutdown")
            .await;
    }
    for p in peers {
        p.close().await;
    }

    // Every interval is closed, by the server itself, at the stop.
    let db = common::pg::open_section(&db_section).await;
    let events = attendance::events(&db, &sid).await.unwrap();
    let joins = events.iter().filter(|e| e.kind == Kind::Joined).count();
    let lefts: Vec<&attendance::Event> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Left(_)))
        .collect();
    assert_eq!(joins, 4, "{events:?}");
    assert_eq!(lefts.len(), 4, "{events:?}");
    for e in &lefts {
        assert!(!e.by_recovery, "{e:?}");
        assert!(e.at_ms >= stopped_at - 100, "{e:?}");
    }

    // The next start finds nothing to recover and says nothing about a crash.
    let (child, addr, log) = start_logged(&config);
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /api/sessions/{sid}/attendance?format=json HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let export: Value = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(
        export["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["closed_by_recovery"] == false),
        "{export}"
    );
    let log = log.lock().unwrap().clone();
    assert!(
        !log.iter().any(|l| l.contains("left open by a crash")),
        "{log:#?}"
    );
    drop(child);
}

//! Many sessions at once through the real signalling, one of them under attack.
//!
//! S sessions × M members join over `/ws` with real join tokens (a leader and participants;
//! signalling only, no media — the media path has its own load figures in BENCHMARKS.md).
//! Every member then runs probe rounds: raise and lower its hand (each answered with `hand`,
//! the round trip timed), and each leader sends a chat that every member of its session must
//! receive. Meanwhile session 0 suffers two faults: a flooder that sends chat as fast as it
//! can (is told `rate_limited`, disconnected, comes back, floods again) and a crash-looping
//! client that joins and drops its connection without a goodbye, over and over.
//!
//! What must hold in every other session: every member joined, every probe was answered, every
//! chat arrived, nobody got an error, a `bye` or a closed socket, and the attendance log has
//! exactly one join and one leave per member. In session 0: every *acknowledged* join of the
//! crash-looping client is in the attendance log, each with its leave. Round-trip times are
//! printed (`--nocapture`), never asserted: this box is shared and slow.
//!
//! `cargo test --test load` runs 5 × 10, 3 rounds; the full 20 × 30 (600 sockets) is
//! `KURSRELAY_LOAD=20x30 KURSRELAY_LOAD_ROUNDS=10 cargo test --test load -- --nocapture`
//! (RELIABILITY.md; `KURSRELAY_LOAD_PAUSE_MS`, default 1000, is the time between a member's
//! probes, `KURSRELAY_LOAD_FAULTS=0` the baseline without faults).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use kursrelay::attendance::{self, Kind};
use kursrelay::protocol::Role;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Barrier};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a member's reader task saw.
#[derive(Default)]
struct Seen {
    chats: AtomicU64,
    errors: AtomicU64,
    byes: AtomicU64,
    closed: AtomicBool,
}

/// One signalling client: the write half, replies the script waits for, counters.
struct Member {
    tx: SplitSink<Ws, Message>,
    rx: mpsc::UnboundedReceiver<Value>,
    seen: Arc<Seen>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Member {
    /// The reader holds the other half of the socket: end it, so dropping a member really
    /// ends its TCP connection (as a crashed browser's does).
    fn drop(&mut self) {
        self.reader.abort();
    }
}

const WAIT: Duration = Duration::from_secs(60);

impl Member {
    /// Connects, says hello and joins; None if the server did not answer `joined`.
    async fn join(url: &str, token: &str) -> Option<Member> {
        let nodelay = std::env::var("KURSRELAY_LOAD_NODELAY").is_ok();
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, nodelay)
            .await
            .ok()?;
        let (tx, mut read) = ws.split();
        let (fwd, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = read.next().await {
                let Message::Text(text) = frame else { continue };
                // Rosters are most of the traffic and not looked at: skip parsing them, so
                // the clients (in this process) leave the CPU to the server.
                if text.starts_with("{\"type\":\"roster\"") {
                    continue;
                }
                let Ok(msg) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                match msg["type"].as_str() {
                    Some("chat") => {
                        s.chats.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Some("error") => {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("bye") => {
                        s.byes.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("roster") => continue,
                    _ => {}
                }
                let _ = fwd.send(msg);
            }
            s.closed.store(true, Ordering::Relaxed);
        });
        let mut m = Member {
            tx,
            rx,
            seen,
            reader,
        };
        m.send(json!({"type": "hello", "version": 1})).await.ok()?;
        m.expect("welcome").await?;
        m.send(json!({"type": "join", "token": token})).await.ok()?;
        m.expect("joined").await?;
        Some(m)
    }

    async fn send(&mut self, v: Value) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.tx.send(Message::text(v.to_string())).await
    }

    /// The next forwarded message of `kind`; None on timeout, close or another error.
    async fn expect(&mut self, kind: &str) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.rx.recv()).await.ok()??;
            if msg["type"] == kind {
                return Some(msg);
            }
            if msg["type"] == "error" || msg["type"] == "bye" {
                return None;
            }
        }
    }
}

/// Round trips of one session's hand probes.
#[derive(Default)]
struct SessionStats {
    rtts: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<String>>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(rtts: &mut [Duration]) -> String {
    rtts.sort();
    format!(
        "n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        rtts.len(),
        percentile(rtts, 0.5).as_secs_f64() * 1e3,
        percentile(rtts, 0.99).as_secs_f64() * 1e3,
        percentile(rtts, 1.0).as_secs_f64() * 1e3
    )
}

async fn run(sessions: usize, members: usize, rounds: usize, pause: Duration) {
    let server = TestServer::spawn_with(&format!(
        "[abuse]\nwebsockets_per_address = {}\n",
        sessions * members + 100
    ))
    .await;
    let url = server.ws_url();
    // Tokens first (the admin side), so the clock below measures signalling only.
    let mut tokens = Vec::new(); // (session, invite id, token, is leader)
    for s in 0..sessions {
        let label = format!("load-chat-{s}");
        for m in 0..members {
            let role = if m == 0 {
                Role::Leader
            } else {
                Role::Participant
            };
            let (invite, token) = server
                .token_with(&label, role, Some(&format!("P{m}")), false, None)
                .await;
            tokens.push((s, invite, token, m == 0));
        }
    }
    let flood_token = server
        .token("load-chat-0", Role::Participant, Some("Flom"), false)
        .await;
    let (crash_invite, crash_token) = server
        .token_with("load-chat-0", Role::Participant, Some("Krasj"), false, None)
        .await;

    let stats: Arc<Vec<SessionStats>> =
        Arc::new((0..sessions).map(|_| SessionStats::default()).collect());
    let all_joined = Arc::new(Barrier::new(tokens.len() + 1));
    let probes_done = Arc::new(Barrier::new(tokens.len() + 1));
    let chats_checked = Arc::new(Barrier::new(tokens.len() + 1));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (s, _, token, leader) in tokens.clone() {
        let (url, stats) = (url.clone(), stats.clone());
        let (all_joined, probes_done, chats_checked) = (
            all_joined.clone(),
            probes_done.clone(),
            chats_checked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let fail = |why: String| stats[s].failures.lock().unwrap().push(why);
            let member = Member::join(&url, &token).await;
            all_joined.wait().await;
            let Some(mut m) = member else {
                fail("join failed".into());
                probes_done.wait().await;
                chats_checked.wait().await;
                return;
            };
            // Spread the probes over the pause, as people are not in step.
            let offset = rand::random::<u64>() % pause.as_millis().max(1) as u64;
            tokio::time::sleep(Duration::from_millis(offset)).await;
            for r in 0..rounds {
                if leader {
                    let text = format!("probe-{r}");
                    if m.send(json!({"type": "chat", "text": text})).await.is_err() {
                        fail("leader send failed".into());
                    }
                } else {
                    for raised in [true, false] {
                        let kind = if raised { "raise_hand" } else { "lower_hand" };
                        let sent = Instant::now();
                        let ok = m.send(json!({"type": kind})).await.is_ok()
                            && m.expect("hand")
                                .await
                                .is_some_and(|h| h["raised"] == raised);
                        if ok {
                            stats[s].rtts.lock().unwrap().push(sent.elapsed());
                        } else {
                            fail(format!("probe {kind} of round {r} unanswered"));
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
            probes_done.wait().await;
            // Every leader chat of this session (the leader's own echo included) arrives.
            let want = rounds as u64;
            let deadline = Instant::now() + WAIT;
            while m.seen.chats.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if s != 0 && m.seen.chats.load(Ordering::Relaxed) != want {
                fail(format!(
                    "{} of {want} chats arrived",
                    m.seen.chats.load(Ordering::Relaxed)
                ));
            }
            if m.seen.errors.load(Ordering::Relaxed) > 0
                || m.seen.byes.load(Ordering::Relaxed) > 0
                || m.seen.closed.load(Ordering::Relaxed)
            {
                fail("error, bye or close during the run".into());
            }
            chats_checked.wait().await;
            let _ = m.send(json!({"type": "leave"})).await;
            if m.expect("bye").await.is_none() {
                fail("no bye after leave".into());
            }
        }));
    }

    // The faults in session 0, running until every probe is done. `KURSRELAY_LOAD_FAULTS=0`
    // leaves them out: the baseline the round trips are compared with in RELIABILITY.md.
    let faults = std::env::var("KURSRELAY_LOAD_FAULTS").as_deref() != Ok("0");
    let stop = Arc::new(AtomicBool::new(!faults));
    let flood = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut sent, mut cut_off) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let Some(mut m) = Member::join(&url, &flood_token).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while !m.seen.closed.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if m.send(json!({"type": "chat", "text": format!("flom {sent}")}))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                    if sent % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                if m.seen.errors.load(Ordering::Relaxed) > 0 {
                    cut_off += 1;
                }
            }
            (sent, cut_off)
        })
    };
    let crash = {
        let (url, stop) = (url.clone(), stop.clone());
        let (db, sid0, invite) = (
            server.state.db.clone(),
            server.session("load-chat-0").await,
            crash_invite.clone(),
        );
        tokio::spawn(async move {
            let (mut acked, mut unsettled) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = Member::join(&url, &crash_token).await {
                    acked += 1;
                    // Gone without `leave` or a close frame: the TCP connection just ends.
                    drop(m);
                    // Comes back only once the server has recorded the drop: a join while
                    // the old connection is still listed would *replace* it (one interval,
                    // no new join event) and blur the count below.
                    let mut settled = false;
                    for _ in 0..300 {
                        let events = attendance::events(&db, &sid0).await.unwrap_or_default();
                        let mine = events.iter().filter(|e| e.invite_id == invite);
                        let (j, l) = mine.fold((0, 0), |(j, l), e| match e.kind {
                            Kind::Joined => (j + 1, l),
                            Kind::Left(_) => (j, l + 1),
                            _ => (j, l),
                        });
                        if j == l && j > 0 {
                            settled = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if !settled {
                        unsettled += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, unsettled)
        })
    };

    all_joined.wait().await;
    let joined_in = start.elapsed();
    probes_done.wait().await;
    stop.store(true, Ordering::Relaxed);
    let (flood_sent, flood_cut) = flood.await.unwrap();
    let (crash_acked, crash_unsettled) = crash.await.unwrap();
    chats_checked.wait().await;
    for t in tasks {
        t.await.unwrap();
    }

    // What each session saw.
    eprintln!(
        "{sessions} sessions × {members} members joined in {:.2} s; flooder sent {flood_sent} chats, cut off {flood_cut} times; crash loop: {crash_acked} acknowledged joins",
        joined_in.as_secs_f64()
    );
    let mut others = Vec::new();
    for (s, st) in stats.iter().enumerate() {
        let mut rtts = st.rtts.lock().unwrap().clone();
        if s == 0 {
            eprintln!("session 0 (faults): hand round trip {}", summary(&mut rtts));
        } else {
            others.extend(rtts);
            let failures = st.failures.lock().unwrap();
            assert!(failures.is_empty(), "session {s}: {failures:?}");
        }
    }
    eprintln!(
        "sessions 1..{sessions}: hand round trip {}",
        summary(&mut others)
    );
    assert_eq!(others.len(), (sessions - 1) * (members - 1) * rounds * 2);
    if faults {
        assert!(flood_cut >= 1, "the flooder was never cut off");
        assert!(crash_acked >= 1, "the crash loop never joined");
    }

    // Attendance: one join and one leave per member of the other sessions; every acknowledged
    // join of the crash-looping client, each closed.
    for s in 1..sessions {
        let sid = server.session(&format!("load-chat-{s}")).await;
        let events = attendance::events(&server.state.db, &sid).await.unwrap();
        for (_, invite, _, _) in tokens.iter().filter(|t| t.0 == s) {
            let mine: Vec<_> = events.iter().filter(|e| &e.invite_id == invite).collect();
            let joins = mine.iter().filter(|e| e.kind == Kind::Joined).count();
            let lefts = mine
                .iter()
                .filter(|e| matches!(e.kind, Kind::Left(_)))
                .count();
            assert_eq!((joins, lefts), (1, 1), "session {s}: {mine:?}");
        }
    }
    let sid0 = server.session("load-chat-0").await;
    let db = server.state.db.clone();
    let mut counts = (0, 0);
    for _ in 0..200 {
        let events = attendance::events(&db, &sid0).await.unwrap();
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.invite_id == crash_invite)
            .collect();
        counts = (
            mine.iter().filter(|e| e.kind == Kind::Joined).count() as u64,
            mine.iter()
                .filter(|e| matches!(e.kind, Kind::Left(_)))
                .count() as u64,
        );
        if counts.1 >= counts.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every acknowledged join is in the log, each closed by its drop.
    eprintln!(
        "crash loop: {crash_acked} joins acknowledged ({crash_unsettled} not settled within 30 s), {} joins and {} leaves in the log",
        counts.0, counts.1
    );
    if crash_unsettled == 0 {
        assert_eq!(
            counts.0, crash_acked,
            "crash loop: acknowledged joins vs. the log"
        );
    } else {
        assert!(
            counts.0 <= crash_acked,
            "more joins logged than acknowledged"
        );
    }
    assert_eq!(counts.0, counts.1, "every crash-loop join closed");
    server.shutdown().await;
}

/// `KURSRELAY_LOAD=SxM` (and `KURSRELAY_LOAD_ROUNDS`) override the CI size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_at_once_one_under_attack() {
    let (sessions, members) = std::env::var("KURSRELAY_LOAD")
        .ok()
        .and_then(|v| {
            let (s, m) = v.split_once('x')?;
            Some((s.parse().ok()?, m.parse().ok()?))
        })
        .unwrap_or((5, 10));
    let rounds = std::env::var("KURSRELAY_LOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Every member probes once per pause: raising a hand changes the session's roster, which
    // goes to all its members, so this is M × M / pause roster messages per session.
    let pause = std::env::var("KURSRELAY_LOAD_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_millis(1000));
    assert!(sessions >= 2 && members >= 2);
    run(sessions, members, rounds, pause).await;
}

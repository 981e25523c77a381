//! Several nodes on one real PostgreSQL (issue 22): heartbeats, one owner per session by a
//! lease with an epoch, a takeover once renewals stop, and the stale owner's writes refused;
//! rooms that run only under their lease; a member carried from the node it reached to the
//! node running the session (real servers, real webrtc-rs peers), the node door's secret, the
//! admin API on any node; a node killed with SIGKILL and its session going on elsewhere with
//! its attendance whole; three nodes and the owner killed, its old epoch refused by the store;
//! the store stopped for 30 s under running sessions; deploy/nginx-region.conf in front of two
//! nodes; a browser and WHIP equipment given a node that does not run the session. Always on
//! PostgreSQL (tests/common/pg.rs), whatever KURSRELAY_TEST_DB says.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kursrelay::attendance::{self, Attendance, Event, Kind, Record};
use kursrelay::cluster::Node;
use kursrelay::config::{ClusterConfig, Config};
use kursrelay::db::cluster::Claim;
use kursrelay::db::{Db, DbError, NewSession, SessionState};
use kursrelay::protocol::Role;
use serde_json::json;

const LEASE_MS: u64 = 1500;
const RENEW_MS: u64 = 300;
/// The region's node secret in these tests.
const SECRET: &str = "region-node-secret-0123456789abcdef";

fn node_config(id: &str) -> ClusterConfig {
    ClusterConfig {
        node_id: id.into(),
        internal_url: format!("http://127.0.0.1:1/{id}"),
        lease_ms: LEASE_MS,
        renew_interval_ms: RENEW_MS,
        secret: SECRET.into(),
    }
}

async fn open(url: &str) -> Db {
    common::pg::open_section(&format!("[db]\nurl = \"{url}\"\n")).await
}

async fn new_session(db: &Db) -> String {
    let course = db.create_course("Regionkurs").await.unwrap();
    db.create_session(
        &course.id,
        &NewSession {
            title: "Dag 1".into(),
            starts_at: utc_in(-3600),
            ends_at: utc_in(3600),
            host_site: "Molde".into(),
            chat_enabled: false,
            roster: Default::default(),
        },
    )
    .await
    .unwrap()
    .id
}

fn joined(subject: &str) -> Event {
    Event {
        subject: subject.into(),
        invite_id: subject.into(),
        role: Role::Participant,
        kind: Kind::Joined,
        at_ms: attendance::now_ms(),
        by_recovery: false,
    }
}

/// Claims on `node` until it owns `session` or `within` passes; the lease and how long it took.
async fn claim_when_free(
    node: &Node,
    session: &str,
    within: Duration,
) -> (kursrelay::db::cluster::Lease, Duration) {
    let started = Instant::now();
    loop {
        match node.claim(session).await.unwrap() {
            Claim::Owned(lease) => return (lease, started.elapsed()),
            Claim::Elsewhere { .. } => {
                assert!(started.elapsed() < within, "never became free");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
fn cluster_settings_are_checked_naming_the_key() {
    let pg = "[db]\nurl = \"postgres://k@db.example/k\"\n";
    let cases = [
        ("[cluster]\nnode_id = \"molde-1\"\ninternal_url = \"http://10.0.0.1:8081\"\n", "cluster.node_id", "PostgreSQL"),
        ("[cluster]\nnode_id = \"molde 1\"\ninternal_url = \"http://10.0.0.1:8081\"\n", "cluster.node_id", "letters"),
        ("[cluster]\nnode_id = \"molde-1\"\n", "cluster.internal_url", "other nodes reach"),
        ("[cluster]\nnode_id = \"molde-1\"\ninternal_url = \"10.0.0.1:8081\"\n", "cluster.internal_url", "http://"),
        ("[cluster]\ninternal_url = \"http://10.0.0.1:8081\"\n", "cluster.node_id", "is empty"),
        ("[cluster]\nnode_id = \"m\"\ninternal_url = \"http://h:1\"\nlease_ms = 2000\nrenew_interval_ms = 1000\nsecret = \"region-node-secret-0123456789abcdef\"\n", "cluster.lease_ms", "three"),
        ("[cluster]\nnode_id = \"m\"\ninternal_url = \"http://h:1\"\nrenew_interval_ms = 10\nsecret = \"region-node-secret-0123456789abcdef\"\n", "cluster.renew_interval_ms", "100"),
        // The node secret: required with a node, long, and not without one.
        ("[cluster]\nnode_id = \"m\"\ninternal_url = \"http://h:1\"\n", "cluster.secret", "at least 32"),
        ("[cluster]\nnode_id = \"m\"\ninternal_url = \"http://h:1\"\nsecret = \"short\"\n", "cluster.secret", "at least 32"),
        ("[cluster]\nsecret = \"region-node-secret-0123456789abcdef\"\n", "cluster.secret", "node_id is empty"),
        ("[cluster]\nnode_id = \"m\"\ninternal_url = \"https://h:1\"\nsecret = \"region-node-secret-0123456789abcdef\"\n", "cluster.internal_url", "plain http://"),
    ];
    for (i, (cluster, key, want)) in cases.iter().enumerate() {
        // The first case is about SQLite; the others have PostgreSQL.
        let text = if i == 0 {
            cluster.to_string()
        } else {
            format!("{pg}{cluster}")
        };
        let err = Config::from_overlay(Some((&text, "test")))
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"))
            .to_string();
        assert!(err.contains(key) && err.contains(want), "{text}: {err}");
    }
    let ok = format!(
        "{pg}[cluster]\nnode_id = \"molde-1\"\ninternal_url = \"http://10.0.0.1:8081\"\nsecret = \"{SECRET}\"\n"
    );
    let config = Config::from_overlay(Some((&ok, "test"))).unwrap();
    assert!(config.cluster.enabled());
    // Nor the node secret.
    assert!(!format!("{config:?}").contains(SECRET));
    // A password in db.url never shows in a debug print of the configuration.
    let secret = "[db]\nurl = \"postgres://kurs:hemmelig@db.example/k\"\n";
    let config = Config::from_overlay(Some((secret, "test"))).unwrap();
    assert!(!format!("{config:?}").contains("hemmelig"));
    // Absent: a single server, nothing changes.
    assert!(!Config::from_overlay(None).unwrap().cluster.enabled());
}

/// Two nodes (two pools with their own fences, as two processes have): one claims, the other
/// cannot while renewals run; once they stop, the other takes the session with a higher epoch
/// and the first one's writes — attendance and session state — are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_a_takeover_with_a_higher_epoch_and_stale_writes_refused() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let (db_a, db_b) = (open(&url).await, open(&url).await);
    let a = Node::new(db_a.clone(), &node_config("molde-1")).unwrap();
    let b = Node::new(db_b.clone(), &node_config("alesund-1")).unwrap();
    let session = new_session(&db_a).await;

    let Claim::Owned(first) = a.claim(&session).await.unwrap() else {
        panic!("a free session is claimed");
    };
    assert_eq!(first.epoch, 1);
    // Claiming again on the owner renews without a new epoch.
    assert!(matches!(a.claim(&session).await.unwrap(), Claim::Owned(l) if l.epoch == 1));
    assert_eq!(
        b.claim(&session).await.unwrap(),
        Claim::Elsewhere {
            node_id: "molde-1".into(),
            epoch: 1,
            expires_ms: a.lease(&session).unwrap().expires_ms
        }
    );

    // While A renews, B cannot take it, well past one lease.
    let renewals = tokio_util::sync::CancellationToken::new();
    a.spawn(renewals.clone());
    let until = Instant::now() + Duration::from_millis(2 * LEASE_MS);
    while Instant::now() < until {
        assert!(matches!(
            b.claim(&session).await.unwrap(),
            Claim::Elsewhere { .. }
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A's writes count while it owns the session.
    let writer_a = Attendance::spawn(db_a.clone());
    let ack = writer_a.record(Record {
        session_id: session.clone(),
        event: joined("kari"),
    });
    ack.await.expect("the owner's event is committed");
    db_a.advance_session(&session, SessionState::Live)
        .await
        .unwrap();

    // Renewals stop (a node that hangs or dies): B takes over after the lease, epoch 2.
    renewals.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await; // a renewal in flight finishes
    let last_expiry = db_a.lease_of(&session).await.unwrap().unwrap().2;
    let (second, _) = claim_when_free(&b, &session, Duration::from_secs(10)).await;
    assert_eq!(second.epoch, 2);
    assert!(
        attendance::now_ms() >= last_expiry,
        "taken over before the owner's last lease ran out"
    );
    assert_eq!(
        db_b.lease_of(&session).await.unwrap(),
        Some(("alesund-1".into(), 2, second.expires_ms))
    );

    // The stale owner: its attendance is not written (its member's task hears "not
    // recorded"), its session state change is refused, and its next renewal finds it lost.
    let stale = writer_a.record(Record {
        session_id: session.clone(),
        event: joined("per"),
    });
    assert!(
        stale.await.is_err(),
        "a stale owner's event was acknowledged"
    );
    let refused = db_a.advance_session(&session, SessionState::Ended).await;
    assert!(
        matches!(refused, Err(DbError::Fenced { epoch: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(
        a.tick(attendance::now_ms()).await.unwrap(),
        vec![session.clone()]
    );
    assert!(a.lease(&session).is_none());
    // Nor can it claim the session back while B renews.
    b.spawn(tokio_util::sync::CancellationToken::new());
    assert!(matches!(
        a.claim(&session).await.unwrap(),
        Claim::Elsewhere { node_id, epoch: 2, .. } if node_id == "alesund-1"
    ));

    // The new owner writes.
    let writer_b = Attendance::spawn(db_b.clone());
    writer_b
        .record(Record {
            session_id: session.clone(),
            event: joined("ola"),
        })
        .await
        .expect("the new owner's event is committed");
    let subjects: Vec<String> = attendance::events(&db_b, &session)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.subject)
        .collect();
    assert_eq!(subjects, ["kari", "ola"]);
    assert_eq!(
        db_b.session(&session).await.unwrap().state,
        SessionState::Live
    );
}

/// The store-outage rule, with times passed in (no sleeping): an expired lease whose owner
/// still beats is not free — the door carries to the owner and the sweep leaves it — nor is
/// any expired lease for a node whose own rounds reached the store less than a lease ago (just
/// after the store came back, when every lease looks stale). A lease whose owner stopped
/// beating a lease ago is free to a node that judges; a lease given up is free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_whose_owner_still_beats_is_not_taken() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let db = open(&url).await;
    let session = new_session(&db).await;
    let now = attendance::now_ms();
    let lease = LEASE_MS as i64;
    // A's lease ran out two leases ago (it could not renew), but A beats now.
    db.claim_session(&session, "molde-1", now - 3 * lease, lease)
        .await
        .unwrap();
    db.heartbeat("molde-1", "http://127.0.0.1:1/molde-1", now)
        .await
        .unwrap();
    // B has reached the store for more than a lease: it judges.
    let b = Node::new(open(&url).await, &node_config("volda-1")).unwrap();
    b.tick(now - 2 * lease).await.unwrap();
    assert!(b.judges_leases(now));
    let owner = b.owner_elsewhere(&session).await.unwrap();
    assert_eq!(owner.map(|o| o.node_id).as_deref(), Some("molde-1"));
    assert_eq!(b.orphans().await.unwrap(), Vec::<String>::new());

    // C's store just came back: it does not judge yet, even once A's heartbeat is old.
    db.heartbeat("molde-1", "http://127.0.0.1:1/molde-1", now - 3 * lease)
        .await
        .unwrap();
    let c = Node::new(open(&url).await, &node_config("kristiansund-1")).unwrap();
    c.tick(attendance::now_ms()).await.unwrap();
    assert!(!c.judges_leases(attendance::now_ms()));
    assert!(c.owner_elsewhere(&session).await.unwrap().is_some());
    assert_eq!(c.orphans().await.unwrap(), Vec::<String>::new());

    // A stopped beating a lease ago: free to B, for the door and the sweep.
    assert_eq!(b.owner_elsewhere(&session).await.unwrap(), None);
    assert_eq!(b.orphans().await.unwrap(), vec![session.clone()]);

    // A lease given up is free at once, whatever the owner's heartbeat and C's judgement.
    let Claim::Owned(mine) = db
        .claim_session(&session, "molde-1", attendance::now_ms(), lease)
        .await
        .unwrap()
    else {
        panic!("the expired lease is claimed back");
    };
    db.heartbeat(
        "molde-1",
        "http://127.0.0.1:1/molde-1",
        attendance::now_ms(),
    )
    .await
    .unwrap();
    db.release_lease(&mine).await.unwrap();
    assert_eq!(c.owner_elsewhere(&session).await.unwrap(), None);
}

/// The attendance writer and a stopped PostgreSQL (fast shutdown: the connections are cut and
/// new ones refused, the other way a store goes away): an event recorded meanwhile is not
/// acknowledged while the server is down, and is committed and acknowledged once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_recorded_while_the_store_is_stopped_is_written_when_it_is_back() {
    init_tracing();
    let mut pg = common::pg::own_cluster("stopped");
    let url = pg.fresh_database().await;
    let db = open(&url).await;
    let session = new_session(&db).await;
    let writer = Attendance::spawn(db.clone());
    writer
        .record(Record {
            session_id: session.clone(),
            event: joined("kari"),
        })
        .await
        .expect("committed while the store is up");

    pg.stop();
    let mut ack = writer.record(Record {
        session_id: session.clone(),
        event: joined("per"),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        matches!(
            ack.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "acknowledged (or given up) while the store was stopped"
    );
    pg.restart();
    tokio::time::timeout(TIMEOUT, ack)
        .await
        .expect("acknowledged once the store is back")
        .expect("committed, not dropped");
    let subjects: Vec<String> = attendance::events(&db, &session)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.subject)
        .collect();
    assert_eq!(subjects, ["kari", "per"]);
    pg.stop();
}

/// Two nodes claiming a free session at the same moment: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_claims_at_once_have_one_winner() {
    let url = common::pg::fresh_database().await;
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(Node::new(open(&url).await, &node_config(&format!("node-{i}"))).unwrap());
    }
    for round in 0..10 {
        let session = format!("s{round}");
        let claims = futures_util::future::join_all(nodes.iter().map(|n| n.claim(&session))).await;
        let winners = claims
            .into_iter()
            .filter(|c| matches!(c, Ok(Claim::Owned(_))))
            .count();
        assert_eq!(winners, 1, "round {round}");
    }
}

/// Real servers: each node writes its heartbeat from start-up and every renewal interval; a
/// node that stops drops out of the live nodes within one lease, and the other node can then
/// take its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_heartbeat_and_the_survivor_takes_the_session() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let overlay = |id: &str| {
        format!(
            "[db]\nurl = \"{url}\"\n[cluster]\nnode_id = \"{id}\"\ninternal_url = \"http://127.0.0.1:9/{id}\"\n\
             lease_ms = {LEASE_MS}\nrenew_interval_ms = {RENEW_MS}\nsecret = \"{SECRET}\"\n"
        )
    };
    let a = TestServer::spawn_with(&overlay("volda-1")).await;
    let b = TestServer::spawn_with(&overlay("kristiansund-1")).await;
    let node_a = a.state.cluster.clone().expect("a node");
    let node_b = b.state.cluster.clone().expect("a node");
    let ids = |rows: Vec<kursrelay::db::cluster::NodeRow>| {
        rows.into_iter().map(|r| r.node_id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(node_b.live_nodes().await.unwrap()),
        ["kristiansund-1", "volda-1"]
    );
    let session = a.session("region").await;
    assert!(matches!(node_a.claim(&session).await.unwrap(), Claim::Owned(l) if l.epoch == 1));
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    assert!(matches!(
        node_b.claim(&session).await.unwrap(),
        Claim::Elsewhere { .. }
    ));

    a.shutdown().await;
    let (lease, _) = claim_when_free(&node_b, &session, Duration::from_secs(10)).await;
    assert_eq!(lease.epoch, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids(node_b.live_nodes().await.unwrap()) != ["kristiansund-1"] {
        assert!(
            Instant::now() < deadline,
            "the stopped node still looks alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.shutdown().await;
}

/// The README's backup for PostgreSQL: `pg_dump --format=custom` while a node writes, then
/// `pg_restore` into an empty database that a node opens with everything in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_pg_restore_keep_every_record() {
    let url = common::pg::fresh_database().await;
    let db = open(&url).await;
    let key = db.secret("join_token_key").await.unwrap();
    let session = new_session(&db).await;
    let writer = Attendance::spawn(db.clone());
    for who in ["kari", "per", "ola"] {
        writer
            .record(Record {
                session_id: session.clone(),
                event: joined(who),
            })
            .await
            .unwrap();
    }
    let bin = common::pg::cluster().bin.clone();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("kursrelay.dump");
    let out = std::process::Command::new(bin.join("pg_dump"))
        .args(["--format=custom", "--file"])
        .arg(&dump)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = common::pg::fresh_database().await;
    let out = std::process::Command::new(bin.join("pg_restore"))
        .arg(format!("--dbname={restored}"))
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = open(&restored).await;
    assert_eq!(copy.session(&session).await.unwrap().title, "Dag 1");
    assert_eq!(attendance::events(&copy, &session).await.unwrap().len(), 3);
    // The same join-token key, so links made before the backup still work after a restore.
    assert_eq!(copy.secret("join_token_key").await.unwrap(), key);
}

/// A loopback port nothing listens on right now (a node must know its own address before it
/// starts: it writes it in its heartbeat row).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node's config overlay: its own HTTP port (also its internal URL), the shared store, short
/// leases.
fn node_overlay(url: &str, id: &str, port: u16) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[db]\nurl = \"{url}\"\n\
         [cluster]\nnode_id = \"{id}\"\ninternal_url = \"http://127.0.0.1:{port}\"\n\
         lease_ms = {LEASE_MS}\nrenew_interval_ms = {RENEW_MS}\nsecret = \"{SECRET}\"\n\
         [attendance]\nseen_interval_ms = 200\n"
    )
}

fn types(peer: &TestPeer) -> Vec<String> {
    peer.inbox()
        .iter()
        .map(|m| m["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The member ids a roster message lists.
fn roster_ids(roster: &serde_json::Value) -> std::collections::BTreeSet<String> {
    roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["member_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The latest roster `peer` got, once it lists `n` members.
async fn roster_of(peer: &TestPeer, n: usize) -> serde_json::Value {
    assert!(
        wait_until(TIMEOUT, || peer
            .inbox()
            .iter()
            .rev()
            .find(|m| m["type"] == "roster")
            .is_some_and(|r| roster_ids(r).len() == n))
        .await,
        "no roster of {n}: {:#?}",
        peer.inbox()
    );
    peer.inbox()
        .into_iter()
        .rev()
        .find(|m| m["type"] == "roster")
        .unwrap()
}

/// Deliverable 2, "any node accepts any join link": the session runs on node A (its leader
/// joined there); Kari's link is opened on node B. B carries her signalling to A: she gets the
/// same messages in the same order as Per, who joined on A, sees the same roster, receives the
/// leader's media from A, and when the leader on A gives her the floor, her camera reaches
/// Per. Only A runs a room; the lease stays A's, epoch 1; her attendance is written by A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_through_another_node_is_carried_to_the_owner() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let session = a.session("region").await;
    let leader_token = a
        .token("region", Role::Leader, Some("Kursleiar"), false)
        .await;
    let (per_invite, per_token) = a
        .token_with("region", Role::Participant, Some("Per"), false, None)
        .await;
    let (kari_invite, kari_token) = a
        .token_with("region", Role::Participant, Some("Kari"), false, None)
        .await;

    let leader = TestPeer::connect(&a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let sent = leader.publish(PublishSpec::default()).await;
    let per = TestPeer::connect(&a, &per_token, None).await;
    per.wait_msg(|m| m["type"] == "joined").await;
    let kari = TestPeer::connect_url(&b.ws_url(), &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;

    // The same opening as on the owner itself: one welcome, then joined.
    assert_eq!(types(&kari)[..2], types(&per)[..2], "{:#?}", kari.inbox());
    assert_eq!(types(&kari).iter().filter(|t| *t == "welcome").count(), 1);
    assert_eq!(
        b.state
            .carried
            .carried_open
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // One room, on A; the lease is A's.
    assert_eq!((a.state.rooms.count(), b.state.rooms.count()), (1, 0));
    let lease = b.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_eq!((lease.0.as_str(), lease.1), ("molde-1", 1));

    // The same roster on both sides.
    let everyone: std::collections::BTreeSet<String> =
        [&leader.member_id, &per.member_id, &kari.member_id]
            .into_iter()
            .cloned()
            .collect();
    assert_eq!(roster_ids(&roster_of(&kari, 3).await), everyone);
    assert_eq!(roster_ids(&roster_of(&per, 3).await), everyone);

    // The leader's media from A.
    let cam = kari.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || kari.received_count(&cam) > 20).await);
    check_delivery(&kari, &cam, &sent[0]);

    // The floor, decided by the leader on A.
    kari.send(json!({"type": "raise_hand"})).await;
    leader
        .wait_msg(|m| {
            m["type"] == "roster"
                && m["hands"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == kari.member_id.as_str()))
        })
        .await;
    leader
        .send(json!({"type": "grant_floor", "member_id": kari.member_id}))
        .await;
    kari.wait_msg(|m| m["type"] == "floor" && m["granted"] == true)
        .await;
    let kari_sent = kari.publish(PublishSpec::default()).await;
    let kari_cam = per.wait_offered(&kari.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || per.received_count(&kari_cam) > 20).await);
    check_delivery(&per, &kari_cam, &kari_sent[0]);

    // She leaves through B; A's room records it, acknowledged by her bye.
    kari.leave().await;
    kari.wait_msg(|m| m["type"] == "bye").await;
    let events = attendance::events(&b.state.db, &session).await.unwrap();
    let kinds = |invite: &str| -> Vec<Kind> {
        events
            .iter()
            .filter(|e| e.invite_id == invite)
            .map(|e| e.kind)
            .filter(|k| matches!(k, Kind::Joined | Kind::Left(_)))
            .collect()
    };
    assert_eq!(
        kinds(&kari_invite),
        [
            Kind::Joined,
            Kind::Left(kursrelay::attendance::LeftReason::Left)
        ]
    );
    assert_eq!(kinds(&per_invite), [Kind::Joined]);
    assert!(
        wait_until(TIMEOUT, || b
            .state
            .carried
            .carried_open
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0)
        .await
    );
    for p in [leader, per] {
        p.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// The node-to-node door: without the region's secret, or with a wrong one, `/cluster/ws` is
/// refused with 401 and a body naming `cluster.secret`, and nothing changes (no room, no
/// lease). With it, it speaks the signalling protocol. A single server has no such door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_door_refuses_a_missing_or_wrong_secret() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    init_tracing();
    let url = common::pg::fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let session = a.session("door").await;
    let token = a
        .token("door", Role::Leader, Some("Kursleiar"), false)
        .await;
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let refused_before = a
        .state
        .carried
        .refused
        .load(std::sync::atomic::Ordering::SeqCst);
    let wrong = format!("Bearer {}", SECRET.replace('0', "1"));
    let short = format!("Bearer {}", &SECRET[..SECRET.len() - 1]);
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(short.as_str()),
        Some("Bearer "),
    ] {
        let mut headers = upgrade.to_vec();
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        let reply = http_request(a.addr, "GET", "/cluster/ws", &headers, b"").await;
        assert_eq!(reply.status, 401, "{auth:?}: {reply:?}");
        assert!(reply.body.contains("cluster.secret"), "{}", reply.body);
        assert!(!reply.body.contains(SECRET));
    }
    assert_eq!(
        a.state
            .carried
            .refused
            .load(std::sync::atomic::Ordering::SeqCst)
            - refused_before,
        4
    );
    // A join through the refused door never happened: no room, no lease.
    assert_eq!(a.state.rooms.count(), 0);
    assert_eq!(a.state.db.lease_of(&session).await.unwrap(), None);

    // With the secret: the protocol, as on /ws.
    let mut request = format!("ws://{}/cluster/ws", a.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {SECRET}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::text(
            json!({"type": "hello", "version": 1}).to_string(),
        ))
        .await
        .unwrap();
        ws.send(Message::text(
            json!({"type": "join", "token": token}).to_string(),
        ))
        .await
        .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                seen.push(v["type"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(seen, ["welcome", "joined"]);
    }
    assert_eq!(
        a.state
            .db
            .lease_of(&session)
            .await
            .unwrap()
            .map(|l| (l.0, l.1)),
        Some(("molde-1".to_owned(), 1))
    );
    drop(ws);
    a.shutdown().await;

    // A single server: no node door at all.
    let single = TestServer::spawn().await;
    let reply = http_request(single.addr, "GET", "/cluster/ws", &upgrade, b"").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    single.shutdown().await;
}

/// A node in its own process, to be killed with SIGKILL; killed when dropped.
struct NodeProcess(std::process::Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary with `config` and waits until it listens.
fn start_node(config: &std::path::Path) -> NodeProcess {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kursrelay"))
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let node = NodeProcess(child);
    let mut line = String::new();
    let mut listening = false;
    while out.read_line(&mut line).unwrap() > 0 {
        if line.contains("kursrelay listening on http://") {
            listening = true;
            break;
        }
        line.clear();
    }
    assert!(listening, "the node never said it listens");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    node
}

/// Deliverable 4, a node's loss survived: the session runs on node A (a real process); Kari
/// and Ola (an open link, let in from the lobby) are carried to it from node B. A gets
/// SIGKILL. Kari's socket is closed by B (1001); the leader and Kari reconnect through B,
/// which waits out A's lease, takes the session with epoch 2, closes the intervals A left open
/// at A's last renewal, and runs it: the leader's media reaches Kari again. Ola comes back
/// with his rejoin token straight in, without the lobby. Every acknowledged join and leave is
/// in the record, each person under one subject, and once everyone has left every interval
/// is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_the_session_continues_on_another_node() {
    use kursrelay::attendance::LeftReason;
    init_tracing();
    let url = common::pg::fresh_database().await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let session = b.session("failover").await;
    let (leader_invite, leader_token) = b
        .token_with("failover", Role::Leader, Some("Kursleiar"), false, None)
        .await;
    let (kari_invite, kari_token) = b
        .token_with("failover", Role::Participant, Some("Kari"), false, None)
        .await;
    let (per_invite, per_token) = b
        .token_with("failover", Role::Participant, Some("Per"), false, None)
        .await;
    // Someone by the session's open link, let in from the lobby.
    let (ola_invite, open_link) = b
        .token_with("failover", Role::Participant, None, true, None)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("molde-1.toml");
    let port_a = free_port();
    std::fs::write(
        &config,
        format!(
            "[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\nice_disconnected_timeout_ms = 1000\nice_failed_timeout_ms = 2000\n\
             [auth]\nadmin_key = \"{ADMIN_KEY}\"\n[log]\nfilter = \"warn\"\n{}",
            node_overlay(&url, "molde-1", port_a)
        ),
    )
    .unwrap();
    let node_a = start_node(&config);
    let ws_a = format!("ws://127.0.0.1:{port_a}/ws");

    let leader = TestPeer::connect_url(&ws_a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    leader.publish(PublishSpec::default()).await;
    let per = TestPeer::connect_url(&ws_a, &per_token, None).await;
    per.wait_msg(|m| m["type"] == "joined").await;
    let kari = TestPeer::connect_url(&b.ws_url(), &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let cam = kari.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || kari.received_count(&cam) > 20).await);
    let ola = TestPeer::connect_url(&b.ws_url(), &open_link, Some("Ola")).await;
    ola.wait_msg(|m| m["type"] == "lobby").await;
    leader
        .send(json!({"type": "admit", "member_id": ola.member_id}))
        .await;
    let admitted = ola.wait_msg(|m| m["type"] == "joined").await;
    let rejoin = admitted["rejoin_token"].as_str().unwrap().to_owned();
    per.leave().await;
    per.wait_msg(|m| m["type"] == "bye").await;
    assert_eq!(
        b.state
            .db
            .lease_of(&session)
            .await
            .unwrap()
            .map(|l| (l.0, l.1)),
        Some(("molde-1".to_owned(), 1))
    );
    tokio::time::sleep(Duration::from_millis(600)).await; // a few renewals and last-seen notes

    let killed_at = attendance::now_ms();
    let killed = Instant::now();
    drop(node_a); // SIGKILL
    assert!(
        wait_until(TIMEOUT, || kari.socket_closed()).await,
        "B kept Kari's socket open after the owner died"
    );
    for p in [leader, kari, per, ola] {
        p.close().await;
    }

    // Everyone comes back through B.
    let leader = TestPeer::connect_url(&b.ws_url(), &leader_token, None).await;
    let back = leader
        .wait_msg(|m| m["type"] == "joined" || m["type"] == "error")
        .await;
    assert_eq!(back["type"], "joined", "{back}");
    let rejoined_ms = killed.elapsed().as_millis();
    let (owner, epoch, _) = b.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_eq!((owner.as_str(), epoch), ("volda-1", 2));
    assert!(
        attendance::now_ms() >= killed_at + LEASE_MS as i64 - RENEW_MS as i64 - 100,
        "taken over before the dead owner's lease ran out"
    );
    let sent = leader.publish(PublishSpec::default()).await;
    let kari = TestPeer::connect_url(&b.ws_url(), &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let cam = kari.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || kari.received_count(&cam) > 20).await);
    check_delivery(&kari, &cam, &sent[0]);
    let media_ms = killed.elapsed().as_millis();
    eprintln!(
        "owner killed: rejoined through the other node after {rejoined_ms} ms, media back after {media_ms} ms (lease {LEASE_MS} ms)"
    );
    assert_eq!(b.state.rooms.count(), 1);
    // Ola comes back with the token the page kept: straight in, no second lobby wait.
    let ola = TestPeer::connect_url(&b.ws_url(), &rejoin, None).await;
    assert_eq!(ola.inbox()[1]["type"], "joined", "{:#?}", ola.inbox());

    for p in [&leader, &kari, &ola] {
        p.leave().await;
        p.wait_msg(|m| m["type"] == "bye").await;
    }
    let events = attendance::events(&b.state.db, &session).await.unwrap();
    let of = |invite: &str| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.invite_id == invite && matches!(e.kind, Kind::Joined | Kind::Left(_)))
            .collect()
    };
    for invite in [&leader_invite, &kari_invite, &ola_invite] {
        let mine = of(invite);
        // The same person before and after: one subject.
        assert!(
            mine.iter().all(|e| e.subject == mine[0].subject),
            "{mine:?}"
        );
        let kinds: Vec<Kind> = mine.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Joined,
                Kind::Left(LeftReason::Recovered),
                Kind::Joined,
                Kind::Left(LeftReason::Left)
            ],
            "{mine:?}"
        );
        // Closed by the new owner at the dead owner's last renewal: after the join, before
        // the kill, at most a renewal interval (and scheduling) before it.
        let closed = mine[1];
        assert!(closed.by_recovery);
        assert!(
            closed.at_ms >= mine[0].at_ms && closed.at_ms <= killed_at,
            "{mine:?}"
        );
        assert!(
            killed_at - closed.at_ms < 1_000,
            "closed {} ms before the kill",
            killed_at - closed.at_ms
        );
    }
    let per_kinds: Vec<Kind> = of(&per_invite).iter().map(|e| e.kind).collect();
    assert_eq!(per_kinds, [Kind::Joined, Kind::Left(LeftReason::Left)]);
    for p in [leader, kari, ola] {
        p.close().await;
    }
    b.shutdown().await;
}

/// A node that loses its session's lease while it still runs the room (cut off from the store
/// long enough for another node to take the session): its members are told to reconnect
/// (`bye` `server_shutdown`, which brings them to the new owner) and its room closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_lease_was_taken_sends_its_members_on() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let session = a.session("taken").await;
    let token = a
        .token("taken", Role::Participant, Some("Kari"), false)
        .await;
    let kari = TestPeer::connect(&a, &token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    assert_eq!(a.state.rooms.count(), 1);
    // As a takeover looks from A: the lease row names another node and a higher epoch.
    let db = open(&url).await;
    sqlx::query("UPDATE session_leases SET node_id = 'alesund-1', epoch = epoch + 1, expires_ms = $2 WHERE session_id = $1")
        .bind(&session)
        .bind(attendance::now_ms() + 60_000)
        .execute(db.pool())
        .await
        .unwrap();
    let bye = kari.wait_msg(|m| m["type"] == "bye").await;
    assert_eq!(bye["reason"], "server_shutdown", "{bye}");
    assert!(wait_until(TIMEOUT, || a.state.rooms.count() == 0).await);
    kari.close().await;
    a.shutdown().await;
}

/// A session whose owner died and whose members never came back: a live node notices the
/// lease ran out (a lease ago), takes it (epoch 2), closes the dead owner's open intervals at its last
/// renewal, and gives it up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_session_nobody_returns_to_is_closed_by_another_node() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let db_dead = open(&url).await;
    let dead = Node::new(db_dead.clone(), &node_config("kristiansund-1")).unwrap();
    let session = new_session(&db_dead).await;
    let Claim::Owned(lease) = dead.claim(&session).await.unwrap() else {
        panic!("a free session is claimed");
    };
    let writer = Attendance::spawn(db_dead.clone());
    writer
        .record(Record {
            session_id: session.clone(),
            event: joined("kari"),
        })
        .await
        .expect("committed");
    // It dies now: no more renewals. A live node comes up.
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let mut closed = None;
    // Swept a lease after it ran out, at the next sweep (every lease).
    let deadline = Instant::now() + Duration::from_millis(6 * LEASE_MS);
    while closed.is_none() && Instant::now() < deadline {
        closed = attendance::events(&b.state.db, &session)
            .await
            .unwrap()
            .into_iter()
            .find(|e| matches!(e.kind, Kind::Left(_)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = closed.expect("the dead node's interval was never closed");
    assert_eq!(
        closed.kind,
        Kind::Left(kursrelay::attendance::LeftReason::Recovered)
    );
    assert!(closed.by_recovery);
    // At the dead tenure's last renewal (its claim, here), but never before the join.
    let joined_at = attendance::events(&b.state.db, &session).await.unwrap()[0].at_ms;
    assert_eq!(
        closed.at_ms,
        (lease.expires_ms - LEASE_MS as i64).max(joined_at)
    );
    let (owner, epoch, expires) = b.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_eq!((owner.as_str(), epoch, expires), ("volda-1", 2, 0));
    b.shutdown().await;
}

/// nginx as shipped in deploy/nginx-region.conf, in front of two nodes (TLS left out here: the
/// single-node file's test covers it, and the test client speaks plain WebSocket).
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn region_nginx(nodes: [u16; 2], dir: &std::path::Path) -> (Nginx, u16) {
    let nginx_bin = common::tools::nginx();
    let mut text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx-region.conf"
    ))
    .unwrap();
    let (http, front) = (free_port(), free_port());
    let d = dir.display();
    let replacements = [
        (
            "server 10.20.30.41:8080 max_fails=1 fail_timeout=10s;",
            format!(
                "server 127.0.0.1:{} max_fails=1 fail_timeout=10s;",
                nodes[0]
            ),
        ),
        (
            "server 10.20.30.42:8080 max_fails=1 fail_timeout=10s;",
            format!(
                "server 127.0.0.1:{} max_fails=1 fail_timeout=10s;",
                nodes[1]
            ),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{http};")),
        ("listen [::]:80;", String::new()),
        ("listen 443 ssl;", format!("listen 127.0.0.1:{front};")),
        ("listen [::]:443 ssl;", String::new()),
        (
            "ssl_certificate     /etc/letsencrypt/live/kurs.helse.example/fullchain.pem;",
            String::new(),
        ),
        (
            "ssl_certificate_key /etc/letsencrypt/live/kurs.helse.example/privkey.pem;",
            String::new(),
        ),
        ("ssl_protocols TLSv1.2 TLSv1.3;", String::new()),
        (
            "/var/log/nginx/kursrelay-access.log",
            format!("{d}/access.log"),
        ),
    ];
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "deploy/nginx-region.conf no longer has {from:?}"
        );
        text = text.replace(from, &to);
    }
    std::fs::write(dir.join("kursrelay.conf"), text).unwrap();
    let main = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  access_log off;\n\
           include {d}/kursrelay.conf;\n}}\n"
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let nginx = Nginx(
        std::process::Command::new(&nginx_bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", front))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (nginx, front)
}

/// The shipped region proxy: every link goes to one address; joins land on either node and
/// all meet in one room on the node that runs the session (carried from the other). That node
/// stops; the members reconnect through the same address, nginx skips the stopped node, and
/// the survivor runs the session with the next epoch. The node door is not reachable through
/// the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_proxy_brings_every_member_to_a_live_node() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let ports = [free_port(), free_port()];
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", ports[0])).await;
    let b = TestServer::spawn_with(&node_overlay(&url, "alesund-1", ports[1])).await;
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, front) = region_nginx(ports, dir.path()).await;
    let front_ws = format!("ws://127.0.0.1:{front}/ws");
    let session = a.session("proxy").await;
    let mut tokens = Vec::new();
    for (role, name) in [
        (Role::Leader, "Kursleiar"),
        (Role::Participant, "Kari"),
        (Role::Participant, "Per"),
        (Role::Participant, "Ola"),
    ] {
        tokens.push(a.token("proxy", role, Some(name), false).await);
    }
    let mut peers = Vec::new();
    for token in &tokens {
        let peer = TestPeer::connect_url(&front_ws, token, None).await;
        let reply = peer
            .wait_msg(|m| m["type"] == "joined" || m["type"] == "error")
            .await;
        assert_eq!(reply["type"], "joined", "{reply}");
        peers.push(peer);
    }
    // One room, on one node; the other carried its share of the members there.
    assert_eq!(a.state.rooms.count() + b.state.rooms.count(), 1);
    let (owner, epoch, _) = a.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_eq!(epoch, 1);
    let carried = |s: &TestServer| {
        s.state
            .carried
            .carried_open
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert!(carried(&a) + carried(&b) >= 1, "no join was carried");
    for p in &peers {
        assert_eq!(roster_ids(&roster_of(p, 4).await).len(), 4);
    }
    for path in ["/cluster/ws", "/cluster/notice/x"] {
        let node_door = http_request(
            format!("127.0.0.1:{front}").parse().unwrap(),
            "GET",
            path,
            &[("Authorization", &format!("Bearer {SECRET}"))],
            b"",
        )
        .await;
        assert_eq!(node_door.status, 404, "{path}");
    }

    // The node running the session stops (an update, a reboot): everyone reconnects through
    // the proxy and lands on the other node, which takes the session.
    let (gone, stays) = if owner == "molde-1" { (a, b) } else { (b, a) };
    gone.shutdown().await;
    for p in peers {
        p.close().await;
    }
    let mut peers = Vec::new();
    for token in &tokens {
        let peer = TestPeer::connect_url(&front_ws, token, None).await;
        let reply = peer
            .wait_msg(|m| m["type"] == "joined" || m["type"] == "error")
            .await;
        assert_eq!(reply["type"], "joined", "{reply}");
        peers.push(peer);
    }
    let (new_owner, epoch, _) = stays.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_ne!(new_owner, owner);
    assert_eq!(epoch, 2);
    for p in &peers {
        assert_eq!(roster_ids(&roster_of(p, 4).await).len(), 4);
    }
    for p in peers {
        p.close().await;
    }
    stays.shutdown().await;
}

/// The admin API called on node B for a session running on node A: A's room follows at once
/// (a withdrawn invite's holder goes, a settings change reaches the members, the end ends it),
/// as it does for a call on A itself. A notice without the secret is refused and does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_on_another_node_reaches_the_running_room() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let session = a.session("notice").await;
    let leader_token = a
        .token("notice", Role::Leader, Some("Kursleiar"), false)
        .await;
    let (kari_invite, kari_token) = a
        .token_with("notice", Role::Participant, Some("Kari"), false, None)
        .await;
    let per_token = a
        .token("notice", Role::Participant, Some("Per"), false)
        .await;
    let leader = TestPeer::connect(&a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let kari = TestPeer::connect(&a, &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let per = TestPeer::connect_url(&b.ws_url(), &per_token, None).await;
    per.wait_msg(|m| m["type"] == "joined").await;
    let admin = format!("Bearer {ADMIN_KEY}");
    let auth = [("Authorization", admin.as_str())];

    // Without the secret: refused, nothing happens.
    let refused = http_request(
        a.addr,
        "POST",
        &format!("/cluster/notice/{session}"),
        &[("Content-Type", "application/json")],
        br#"{"notice":"end"}"#,
    )
    .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.body.contains("cluster.secret"));
    assert_eq!(a.state.rooms.count(), 1);

    // Chat turned on through B: the members on A get a roster saying so.
    let patch = http_request(
        b.addr,
        "PATCH",
        &format!("/api/sessions/{session}"),
        &[auth[0], ("Content-Type", "application/json")],
        br#"{"chat_enabled": true}"#,
    )
    .await;
    assert_eq!(patch.status, 200, "{patch:?}");
    kari.wait_msg(|m| m["type"] == "roster" && m["chat_enabled"] == true)
        .await;

    // Kari's invite withdrawn through B: she goes at once.
    let revoke = http_request(
        b.addr,
        "POST",
        &format!("/api/invites/{kari_invite}/revoke"),
        &auth,
        b"",
    )
    .await;
    assert_eq!(revoke.status, 200, "{revoke:?}");
    let bye = kari.wait_msg(|m| m["type"] == "bye").await;
    assert_eq!(bye["reason"], "revoked", "{bye}");

    // Ended through B: everyone on A, and Per carried from B, hears it.
    let end = http_request(
        b.addr,
        "POST",
        &format!("/api/sessions/{session}/end"),
        &auth,
        b"",
    )
    .await;
    assert_eq!(end.status, 200, "{end:?}");
    for p in [&leader, &per] {
        let bye = p.wait_msg(|m| m["type"] == "bye").await;
        assert_eq!(bye["reason"], "session_ended", "{bye}");
    }
    assert!(wait_until(TIMEOUT, || a.state.rooms.count() == 0).await);
    for p in [leader, kari, per] {
        p.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A carried member who says nothing is kept alive on both legs: the door pings the member,
/// and the owner's pings to the door are answered, so neither idle timeout (1 s here) closes
/// a quiet member's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_carried_member_stays() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let quick = "[signalling]\nping_interval_ms = 200\nidle_timeout_ms = 1000\n";
    let a = TestServer::spawn_with(&format!(
        "{}{quick}",
        node_overlay(&url, "molde-1", free_port())
    ))
    .await;
    let b = TestServer::spawn_with(&format!(
        "{}{quick}",
        node_overlay(&url, "volda-1", free_port())
    ))
    .await;
    let leader_token = a
        .token("quiet", Role::Leader, Some("Kursleiar"), false)
        .await;
    let kari_token = a
        .token("quiet", Role::Participant, Some("Kari"), false)
        .await;
    let leader = TestPeer::connect(&a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let kari = TestPeer::connect_url(&b.ws_url(), &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!kari.socket_closed(), "{:#?}", kari.inbox());
    assert!(!kari.inbox().iter().any(|m| m["type"] == "bye"));
    kari.send(json!({"type": "raise_hand"})).await;
    leader
        .wait_msg(|m| {
            m["type"] == "roster"
                && m["hands"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == kari.member_id.as_str()))
        })
        .await;
    for p in [leader, kari] {
        p.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// The first two members of a session arrive at the same moment at two different nodes: one
/// node wins the session's lease, and the other member is carried there, whichever node lost
/// the race (never an `internal` error). Eight sessions, each started from both sides at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_joins_on_two_nodes_meet_in_one_room() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    const SESSIONS: usize = 8;
    let mut pairs = Vec::new();
    for i in 0..SESSIONS {
        let label = format!("race-{i}");
        let first = a
            .token(&label, Role::Leader, Some("Kursleiar"), false)
            .await;
        let second = a
            .token(&label, Role::Participant, Some("Kari"), false)
            .await;
        pairs.push((first, second));
    }
    let (a_ws, b_ws) = (a.ws_url(), b.ws_url());
    let joins = pairs.iter().map(|(first, second)| {
        let (a_ws, b_ws) = (a_ws.clone(), b_ws.clone());
        async move {
            futures_util::join!(
                TestPeer::connect_url(&a_ws, first, None),
                TestPeer::connect_url(&b_ws, second, None)
            )
        }
    });
    let peers = futures_util::future::join_all(joins).await;
    for (x, y) in &peers {
        for p in [x, y] {
            let reply = p
                .wait_msg(|m| m["type"] == "joined" || m["type"] == "error")
                .await;
            assert_eq!(reply["type"], "joined", "{reply}");
        }
        assert_eq!(roster_ids(&roster_of(x, 2).await).len(), 2);
    }
    assert_eq!(a.state.rooms.count() + b.state.rooms.count(), SESSIONS);
    for (x, y) in peers {
        x.close().await;
        y.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// How long the store stays unreachable in `the_store_unreachable_running_sessions_go_on`: the
/// issue's 30 s. That is twenty leases, and longer than every timeout on the way (the pool's
/// 10 s connect wait, the join's 5 s attendance wait, a lease round's), so whatever would give
/// up during an outage has given up long before the store comes back.
const OUTAGE: Duration = Duration::from_secs(30);

/// Deliverable 4, "if the store is unreachable": two nodes on a PostgreSQL of the test's own,
/// whose every process is stopped (SIGSTOP) for `OUTAGE` — a store that answers nothing, as
/// behind a cut network, the harder case than a refused connection, which fails at once.
/// The leader publishes on A; Kari watches through B (carried), Per on A. During the outage
/// Kari's received count keeps rising, nobody is sent away, the roster stays; Per leaves (his
/// `left` waits in A's writer); a join through B and one on A are refused with the store
/// message, within the door's 2 s wait for the store. After: the lease is still A's with epoch 1 and renewed (nobody took the
/// session, B runs no room), Ola's join through B works, and Per's `left` is committed: every
/// join and leave acknowledged is in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_unreachable_running_sessions_go_on() {
    init_tracing();
    let pg = common::pg::own_cluster("outage");
    let url = pg.fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let session = a.session("region").await;
    let leader_token = a
        .token("region", Role::Leader, Some("Kursleiar"), false)
        .await;
    let mut invites = Vec::new();
    let mut tokens = Vec::new();
    for name in ["Kari", "Per", "Ola", "Lise"] {
        let (invite, token) = a
            .token_with("region", Role::Participant, Some(name), false, None)
            .await;
        invites.push(invite);
        tokens.push(token);
    }

    let leader = TestPeer::connect(&a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let sent = leader.publish(PublishSpec::default()).await;
    let kari = TestPeer::connect_url(&b.ws_url(), &tokens[0], None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let per = TestPeer::connect(&a, &tokens[1], None).await;
    per.wait_msg(|m| m["type"] == "joined").await;
    let cam = kari.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || kari.received_count(&cam) > 20).await);
    roster_of(&leader, 3).await;

    pg.freeze(true);
    let frozen = Instant::now();
    // Both nodes notice within a round or two.
    tokio::time::sleep(Duration::from_millis(3 * RENEW_MS + 600)).await;

    // Per leaves during the outage: his `bye` comes (the room lets him go), the record waits.
    per.leave().await;
    per.wait_msg(|m| m["type"] == "bye").await;

    // New joins are refused clearly, through another node and on the owner itself.
    let store_refusal = |peer: &TestPeer| {
        peer.inbox().into_iter().find(|m| {
            m["type"] == "error"
                && m["request"] == "join"
                && m["code"] == "unavailable"
                && m["message"]
                    .as_str()
                    .is_some_and(|t| t.contains("cannot be reached"))
        })
    };
    let asked = Instant::now();
    let ola = TestPeer::connect_url(&b.ws_url(), &tokens[2], None).await;
    let ola_refused_in = asked.elapsed();
    assert!(store_refusal(&ola).is_some(), "{:#?}", ola.inbox());
    let asked = Instant::now();
    let lise = TestPeer::connect(&a, &tokens[3], None).await;
    let lise_refused_in = asked.elapsed();
    assert!(store_refusal(&lise).is_some(), "{:#?}", lise.inbox());
    eprintln!("joins refused during the outage after {ola_refused_in:?} (through B) and {lise_refused_in:?} (on A)");
    assert!(ola_refused_in < Duration::from_secs(3) && lise_refused_in < Duration::from_secs(3));
    ola.close().await;
    lise.close().await;

    // Media keeps flowing to Kari for the whole outage: her count rises in every fifth of it.
    let mut counts = vec![kari.received_count(&cam)];
    while frozen.elapsed() < OUTAGE {
        let step = (OUTAGE / 5).min(OUTAGE.saturating_sub(frozen.elapsed()));
        tokio::time::sleep(step).await;
        counts.push(kari.received_count(&cam));
    }
    pg.freeze(false);
    eprintln!(
        "store unreachable for {:?}; Kari's received packets along the way: {counts:?}",
        frozen.elapsed()
    );
    assert!(
        counts.windows(2).all(|w| w[1] > w[0]),
        "media stopped during the outage: {counts:?}"
    );
    check_delivery(&kari, &cam, &sent[0]);
    // Nobody was sent away: no bye for the leader or Kari, and the leader's roster still
    // lists the two who stayed.
    for peer in [&leader, &kari] {
        assert!(
            !types(peer).iter().any(|t| t == "bye"),
            "{:#?}",
            peer.inbox()
        );
    }
    assert_eq!(
        roster_ids(&roster_of(&leader, 2).await),
        [&leader.member_id, &kari.member_id]
            .into_iter()
            .cloned()
            .collect()
    );

    // The store is back: A renews its lease with the same epoch; nobody took the session.
    let back = Instant::now();
    let mut renewed = false;
    while back.elapsed() < Duration::from_secs(10) {
        if let Ok(Some((node, epoch, expires))) = b.state.db.lease_of(&session).await {
            assert_eq!((node.as_str(), epoch), ("molde-1", 1));
            if expires > attendance::now_ms() {
                renewed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "A did not renew its lease after the outage");
    eprintln!(
        "lease renewed {:?} after the store came back",
        back.elapsed()
    );
    // Past the point where B judges leases again: still A's, epoch 1, and B runs nothing.
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
    let lease = b.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_eq!((lease.0.as_str(), lease.1), ("molde-1", 1));
    assert_eq!((a.state.rooms.count(), b.state.rooms.count()), (1, 0));

    // A join through B works again (carried to A), and media still reaches Kari.
    let ola = TestPeer::connect_url(&b.ws_url(), &tokens[2], None).await;
    ola.wait_msg(|m| m["type"] == "joined").await;
    let before = kari.received_count(&cam);
    assert!(wait_until(TIMEOUT, || kari.received_count(&cam) > before + 20).await);

    // Every acknowledged join and Per's leave from the outage are in the record.
    let events = attendance::events(&b.state.db, &session).await.unwrap();
    let kinds = |invite: &str| -> Vec<Kind> {
        events
            .iter()
            .filter(|e| e.invite_id == invite)
            .map(|e| e.kind)
            .filter(|k| matches!(k, Kind::Joined | Kind::Left(_)))
            .collect()
    };
    assert_eq!(kinds(&invites[0]), [Kind::Joined]);
    assert_eq!(
        kinds(&invites[1]),
        [
            Kind::Joined,
            Kind::Left(kursrelay::attendance::LeftReason::Left)
        ]
    );
    assert_eq!(kinds(&invites[2]), [Kind::Joined]);
    assert_eq!(kinds(&invites[3]), []);
    for p in [leader, kari, ola] {
        p.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
    pg.stop();
}

/// Deliverable 5 with three nodes: A (a real process, killed with SIGKILL), B and C on one
/// PostgreSQL, each with its own HTTP and media ports. The leader publishes on A; Kari joins
/// through B and Nils through C, both carried to A, and both decode the leader's media. A is
/// killed: everyone reconnects through the node they use (the leader through C), B or C takes
/// the session with a higher epoch no sooner than A's lease allowed, and both viewers decode
/// the leader again. A write with A's old epoch is then refused by the store: its lease
/// renewal, a session state change and an attendance event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_the_owner_killed_both_viewers_decode_again() {
    init_tracing();
    let url = common::pg::fresh_database().await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let c = TestServer::spawn_with(&node_overlay(&url, "kristiansund-1", free_port())).await;
    let session = b.session("three").await;
    let leader_token = b
        .token("three", Role::Leader, Some("Kursleiar"), false)
        .await;
    let kari_token = b
        .token("three", Role::Participant, Some("Kari"), false)
        .await;
    let nils_token = b
        .token("three", Role::Participant, Some("Nils"), false)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("molde-1.toml");
    let port_a = free_port();
    std::fs::write(
        &config,
        format!(
            "[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\n[log]\nfilter = \"warn\"\n{}",
            node_overlay(&url, "molde-1", port_a)
        ),
    )
    .unwrap();
    let node_a = start_node(&config);
    let ws_a = format!("ws://127.0.0.1:{port_a}/ws");

    let leader = TestPeer::connect_url(&ws_a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let sent = leader.publish(PublishSpec::default()).await;
    let kari = TestPeer::connect_url(&b.ws_url(), &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let nils = TestPeer::connect_url(&c.ws_url(), &nils_token, None).await;
    nils.wait_msg(|m| m["type"] == "joined").await;
    for viewer in [&kari, &nils] {
        let cam = viewer.wait_offered(&leader.member_id, "camera").await;
        assert!(wait_until(TIMEOUT, || viewer.received_count(&cam) > 20).await);
        check_delivery(viewer, &cam, &sent[0]);
    }
    // One room, on A; B and C carry.
    assert_eq!((b.state.rooms.count(), c.state.rooms.count()), (0, 0));
    let (owner, old_epoch, _) = b.state.db.lease_of(&session).await.unwrap().unwrap();
    assert_eq!((owner.as_str(), old_epoch), ("molde-1", 1));
    let nodes: Vec<String> = b
        .state
        .cluster
        .as_ref()
        .unwrap()
        .live_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(nodes, ["kristiansund-1", "molde-1", "volda-1"]);

    let killed_at = attendance::now_ms();
    let killed = Instant::now();
    drop(node_a); // SIGKILL
    assert!(
        wait_until(TIMEOUT, || kari.socket_closed() && nils.socket_closed()).await,
        "B or C kept a carried socket open after the owner died"
    );
    for p in [leader, kari, nils] {
        p.close().await;
    }

    // Everyone comes back through the node they use; the leader through C.
    let leader = TestPeer::connect_url(&c.ws_url(), &leader_token, None).await;
    let back = leader
        .wait_msg(|m| m["type"] == "joined" || m["type"] == "error")
        .await;
    assert_eq!(back["type"], "joined", "{back}");
    let sent = leader.publish(PublishSpec::default()).await;
    let kari = TestPeer::connect_url(&b.ws_url(), &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let nils = TestPeer::connect_url(&c.ws_url(), &nils_token, None).await;
    nils.wait_msg(|m| m["type"] == "joined").await;
    for viewer in [&kari, &nils] {
        let cam = viewer.wait_offered(&leader.member_id, "camera").await;
        assert!(wait_until(TIMEOUT, || viewer.received_count(&cam) > 20).await);
        check_delivery(viewer, &cam, &sent[0]);
    }
    let media_ms = killed.elapsed().as_millis();
    let (owner, epoch, _) = b.state.db.lease_of(&session).await.unwrap().unwrap();
    assert!(epoch > old_epoch, "the epoch did not rise: {epoch}");
    assert!(owner == "volda-1" || owner == "kristiansund-1", "{owner}");
    assert!(
        attendance::now_ms() >= killed_at + LEASE_MS as i64 - RENEW_MS as i64 - 100,
        "taken over before the dead owner's lease ran out"
    );
    assert_eq!(b.state.rooms.count() + c.state.rooms.count(), 1);
    eprintln!(
        "three nodes, owner killed: {owner} runs the session with epoch {epoch}; both viewers decode again after {media_ms} ms (lease {LEASE_MS} ms)"
    );

    // A write with A's old epoch, straight through the store API, is refused.
    let stale = open(&url).await;
    let old = kursrelay::db::cluster::Lease {
        session_id: session.clone(),
        node_id: "molde-1".into(),
        epoch: old_epoch,
        expires_ms: killed_at,
    };
    assert_eq!(
        stale
            .renew_lease(&old, attendance::now_ms(), LEASE_MS as i64)
            .await
            .unwrap(),
        None
    );
    stale.set_fence(&session, old.fence());
    let refused = stale.advance_session(&session, SessionState::Ended).await;
    assert!(
        matches!(refused, Err(DbError::Fenced { epoch: 1, .. })),
        "{refused:?}"
    );
    let record = Attendance::spawn(stale.clone()).record(Record {
        session_id: session.clone(),
        event: joined("stale"),
    });
    assert!(
        record.await.is_err(),
        "a stale epoch's event was acknowledged"
    );
    assert_eq!(
        b.state.db.session(&session).await.unwrap().state,
        SessionState::Live
    );
    assert!(!attendance::events(&b.state.db, &session)
        .await
        .unwrap()
        .iter()
        .any(|e| e.subject == "stale"));

    for p in [leader, kari, nils] {
        p.close().await;
    }
    b.shutdown().await;
    c.shutdown().await;
}

/// Any node's address works for browsers and equipment too (issue 22): a Chromium participant
/// whose page and signalling come from node B (carried to A; its media goes straight to A's
/// media port), and a WHIP encoder (Chromium with the npm client) posting to B. B carries the
/// POST and the DELETE to A, where the session runs, and returns A's answers unchanged; the
/// participant decodes the encoder's feed, and the leader on A is offered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_whip_encoder_through_another_node_reach_the_owner() {
    use common::chromium::{equipment_page, Chromium};
    init_tracing();
    let url = common::pg::fresh_database().await;
    let a = TestServer::spawn_with(&node_overlay(&url, "molde-1", free_port())).await;
    let b = TestServer::spawn_with(&node_overlay(&url, "volda-1", free_port())).await;
    let session = a.session("region").await;
    let leader_token = a
        .token("region", Role::Leader, Some("Kursleiar"), false)
        .await;
    let encoder = a
        .token("region", Role::Encoder, Some("Auditoriet, koder"), false)
        .await;
    let kari = a
        .token("region", Role::Participant, Some("Kari"), false)
        .await;
    let leader = TestPeer::connect(&a, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    assert_eq!((a.state.rooms.count(), b.state.rooms.count()), (1, 0));

    // A wrong token through B gets the owner's clear answer, and nothing starts anywhere.
    let path = format!("/whip/{session}");
    let reply = http_request(
        b.addr,
        "POST",
        &path,
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", "Bearer not-a-token"),
        ],
        b"v=0\r\n",
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(
        reply.body.contains("not a valid join token"),
        "{}",
        reply.body
    );
    assert_eq!(a.state.equipment.len() + b.state.equipment.len(), 0);

    let mut browser = Chromium::launch().await;
    let base_b = format!("http://{}", b.addr);
    let part = browser
        .open(&format!("{base_b}/course.html#t={kari}"))
        .await;
    browser
        .eval(&part, "kursrelay.start({}).then(() => true)")
        .await;
    let enc = equipment_page(&mut browser, &base_b).await;
    let whip_url = format!("{base_b}{path}");
    browser
        .eval(
            &enc,
            &format!(
                "(async () => {{
                   const media = await navigator.mediaDevices.getUserMedia({{audio: true, video: true}});
                   const pc = new RTCPeerConnection({{bundlePolicy: 'max-bundle'}});
                   for (const track of media.getTracks()) pc.addTransceiver(track, {{direction: 'sendonly'}});
                   window.whip = new WHIPClient();
                   await window.whip.publish(pc, {whip_url:?}, {encoder:?});
                   return true;
                 }})()"
            ),
        )
        .await;
    // The encoder runs where the session runs, not on the node it was given.
    assert_eq!((a.state.equipment.len(), b.state.equipment.len()), (1, 0));
    assert_eq!(b.state.rooms.count(), 0);
    let decoded = browser
        .try_wait_for(
            &part,
            "kursrelay.stats().then(s => s.framesDecoded > 30 && s.audioPacketsReceived > 20)",
            30,
        )
        .await;
    let stats = browser.eval(&part, "kursrelay.stats()").await;
    assert!(decoded, "the participant through B did not decode: {stats}");
    let roster = roster_of(&leader, 3).await;
    let encoder_id = roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "encoder")
        .expect("the encoder in the owner's roster")["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cam = leader.wait_offered(&encoder_id, "camera").await;
    assert!(wait_until(TIMEOUT, || leader.received_count(&cam) > 20).await);

    // The encoder's DELETE, sent to B, ends it on A.
    browser.eval(&enc, "whip.stop().then(() => true)").await;
    eventually("the encoder gone from the owner", TIMEOUT, || {
        a.state.equipment.is_empty()
    })
    .await;
}

//! Abuse limits per client address, through real HTTP and WebSocket connections: bad join
//! tokens and admin keys cost a failure budget (slowed, then refused) without locking out a
//! course leader with a valid link; WebSockets per address are capped; request bodies are
//! capped; X-Forwarded-For counts only from a trusted proxy. Every test server trusts
//! 127.0.0.1 as its proxy (as behind deploy/nginx.conf), so a test can speak for several
//! client addresses by sending `X-Forwarded-For`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kursrelay::protocol::Role;
use serde_json::json;

const LIMITS: &str = "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
    [abuse]\nauth_failures = 3\nauth_failures_forgiven_per_minute = 1\npenalty_ms = 300\nwebsockets_per_address = 3\n";

const BAD_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiJ4In0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// hello, then join with `token`, from client address `from`; the first `error` or `joined`
/// answer, and how long the answer to the join took.
async fn join_from(server: &TestServer, from: &str, token: &str) -> (serde_json::Value, Duration) {
    let mut ws = WsClient::connect_with(server, &[("X-Forwarded-For", from)])
        .await
        .expect("upgrade");
    ws.send(json!({"type": "hello", "version": 1})).await;
    ws.recv_type("welcome").await;
    let sent = Instant::now();
    ws.send(json!({"type": "join", "token": token})).await;
    loop {
        let msg = ws.recv().await.expect("an answer to join");
        if msg["type"] == "error" || msg["type"] == "joined" {
            let took = sent.elapsed();
            if msg["code"] == "rate_limited" {
                assert_eq!(ws.close_code().await, Some(1008), "closed as policy");
            }
            return (msg, took);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_tokens_are_slowed_and_refused_but_a_valid_leader_gets_in() {
    let server = TestServer::spawn_with(LIMITS).await;
    let leader = server
        .token("abuse", Role::Leader, Some("Ola"), false)
        .await;
    let attacker = "203.0.113.66";

    // Within budget: an ordinary `bad_token`, at once.
    for _ in 0..3 {
        let (msg, _) = join_from(&server, attacker, BAD_TOKEN).await;
        assert_eq!(msg["code"], "bad_token", "{msg}");
    }
    // Over budget: `rate_limited` after the penalty delay, and the socket is closed.
    let (msg, took) = join_from(&server, attacker, BAD_TOKEN).await;
    assert_eq!(msg["code"], "rate_limited", "{msg}");
    assert!(took >= Duration::from_millis(300), "not slowed: {took:?}");
    assert!(msg["message"].as_str().unwrap().contains("try again"));

    // The course leader behind the same (NAT) address: a valid link still gets in.
    let (msg, _) = join_from(&server, attacker, &leader).await;
    assert_eq!(msg["type"], "joined", "leader locked out: {msg}");
    // Another address is not affected by the first one's failures.
    let (msg, _) = join_from(&server, "198.51.100.20", BAD_TOKEN).await;
    assert_eq!(msg["code"], "bad_token", "{msg}");
    // An expired or revoked link is no guess: only forged or garbled tokens count.
    let metrics = http_request(server.addr, "GET", "/metrics", &[], b"")
        .await
        .body;
    assert!(
        metrics.contains("kursrelay_auth_failures_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kursrelay_auth_refused_total 1"),
        "{metrics}"
    );

    // /link-check is a way to test tokens too: same budget, same answer over it.
    let body = json!({"token": BAD_TOKEN}).to_string();
    let r = http_request(
        server.addr,
        "POST",
        "/link-check",
        &[
            ("X-Forwarded-For", attacker),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.head.contains("retry-after: "), "{r:?}");
    let body = json!({"token": leader}).to_string();
    let r = http_request(
        server.addr,
        "POST",
        "/link-check",
        &[
            ("X-Forwarded-For", attacker),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"state\":\"ok\""), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_a_trusted_proxy() {
    // No trusted proxy: X-Forwarded-For is the client's own claim and changes nothing.
    let server = TestServer::spawn_with(
        "[abuse]\nauth_failures = 2\nauth_failures_forgiven_per_minute = 1\npenalty_ms = 10\n",
    )
    .await;
    for i in 0..2 {
        let (msg, _) = join_from(&server, &format!("192.0.2.{i}"), BAD_TOKEN).await;
        assert_eq!(msg["code"], "bad_token");
    }
    // A "new" address claimed by the same peer is still the same peer.
    let (msg, _) = join_from(&server, "192.0.2.99", BAD_TOKEN).await;
    assert_eq!(msg["code"], "rate_limited", "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_keys_are_refused_per_address() {
    let server = TestServer::spawn_with(LIMITS).await;
    let leader = server.token("abuse-admin", Role::Leader, None, false).await;
    let session = server.session("abuse-admin").await;
    let attacker = "203.0.113.77";
    let get = |from: &'static str, key: String| {
        let addr = server.addr;
        async move {
            let auth = format!("Bearer {key}");
            http_request(
                addr,
                "GET",
                "/api/courses",
                &[("X-Forwarded-For", from), ("Authorization", &auth)],
                b"",
            )
            .await
        }
    };
    for i in 0..3 {
        let r = get(attacker, format!("guess-{i}")).await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    // Over budget: 429 with Retry-After, before the key is looked at — the right key too.
    let r = get(attacker, "guess-4".into()).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.head.contains("retry-after: "), "{r:?}");
    assert!(r.body.contains("\"error\":\"rate_limited\""), "{r:?}");
    let r = get(attacker, ADMIN_KEY.into()).await;
    assert_eq!(r.status, 429, "{r:?}");
    // Registration staff elsewhere are not affected.
    let r = get("198.51.100.30", ADMIN_KEY.into()).await;
    assert_eq!(r.status, 200, "{r:?}");
    // A request without any key is no guess and costs nothing.
    for _ in 0..5 {
        let r = http_request(
            server.addr,
            "GET",
            "/api/courses",
            &[("X-Forwarded-For", "198.51.100.31")],
            b"",
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = get("198.51.100.31", ADMIN_KEY.into()).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The course leader behind the attacker's address still reads the attendance with the
    // join token; a bad token from there is refused after the penalty.
    let path = format!("/api/sessions/{session}/attendance?format=json");
    let auth = format!("Bearer {leader}");
    let r = http_request(
        server.addr,
        "GET",
        &path,
        &[("X-Forwarded-For", attacker), ("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let auth = format!("Bearer {BAD_TOKEN}");
    let r = http_request(
        server.addr,
        "GET",
        &path,
        &[("X-Forwarded-For", attacker), ("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(r.status, 429, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_per_address_are_capped() {
    let server = TestServer::spawn_with(LIMITS).await;
    let from = [("X-Forwarded-For", "203.0.113.5")];
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            WsClient::connect_with(&server, &from)
                .await
                .expect("within the cap"),
        );
    }
    assert_eq!(
        WsClient::connect_with(&server, &from).await.err(),
        Some(429),
        "a fourth socket from one address"
    );
    // Another address still connects, and works.
    let mut other = WsClient::connect_with(&server, &[("X-Forwarded-For", "203.0.113.6")])
        .await
        .expect("another address");
    other.send(json!({"type": "hello", "version": 1})).await;
    other.recv_type("welcome").await;
    // When one closes, its slot is free again (the server notices the close first).
    open.pop().unwrap().close().await;
    let (srv, from) = (&server, &from);
    let _reopened = eventually_async("the slot given back", TIMEOUT, || async move {
        WsClient::connect_with(srv, from).await.ok()
    })
    .await;
    let metrics = http_request(server.addr, "GET", "/metrics", &[], b"")
        .await
        .body;
    assert!(metrics.contains("kursrelay_websockets_open 4"), "{metrics}");
}

/// Issue 21: a hospital's staff follow a course from their desks behind one NAT address. The
/// cap counts only sockets nobody has vouched for yet (not joined, or waiting in an open
/// link's lobby); a member let in with a valid join token stops counting, so the 101st viewer
/// (here: with a cap of 3, the fourth to the tenth) gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_a_valid_link_do_not_count_against_the_socket_cap() {
    let server = TestServer::spawn_with(LIMITS).await;
    let from = [("X-Forwarded-For", "203.0.113.7")];
    let mut members = Vec::new();
    for i in 0..10 {
        let token = server
            .token("nat", Role::Participant, Some(&format!("P{i}")), false)
            .await;
        let mut ws = WsClient::connect_with(&server, &from)
            .await
            .unwrap_or_else(|status| panic!("member {i} refused: {status}"));
        ws.hello_join(&token).await;
        members.push(ws);
    }
    // Sockets nobody vouched for are still capped: three fill the cap, a fourth is refused.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            WsClient::connect_with(&server, &from)
                .await
                .expect("within the cap"),
        );
    }
    assert_eq!(
        WsClient::connect_with(&server, &from).await.err(),
        Some(429),
        "a fourth socket without a member"
    );
    // People on an open link count while they wait in the lobby, and stop counting once let
    // in. Free the cap, fill it with three waiting people, admit one: a slot is free again.
    for ws in idle.drain(..) {
        ws.close().await;
    }
    let leader = TestPeer::leader(&server, "nat", "Ola").await;
    let open = server.token("nat", Role::Participant, None, true).await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let (srv, from) = (&server, &from);
        let mut ws = eventually_async("a slot given back", TIMEOUT, || async move {
            WsClient::connect_with(srv, from).await.ok()
        })
        .await;
        ws.send(json!({"type": "hello", "version": 1})).await;
        ws.recv_type("welcome").await;
        ws.send(json!({"type": "join", "token": open})).await;
        let lobby = ws.recv_type("lobby").await;
        waiting.push((ws, lobby["member_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        WsClient::connect_with(&server, &from).await.err(),
        Some(429),
        "three people waiting in the lobby fill the cap"
    );
    leader
        .send(json!({"type": "admit", "member_id": waiting[0].1}))
        .await;
    waiting[0].0.recv_type("joined").await;
    assert!(
        WsClient::connect_with(&server, &from).await.is_ok(),
        "an admitted person still held a slot"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_capped() {
    let server = TestServer::spawn().await;
    let auth = format!("Bearer {ADMIN_KEY}");
    let json_headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // An admin API body over 256 KiB: 413 in the API's JSON error format.
    let big = format!("{{\"title\": \"{}\"}}", "x".repeat(300 * 1024));
    let r = http_request(
        server.addr,
        "POST",
        "/api/courses",
        &json_headers,
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.body.contains("\"error\":\"too_large\""), "{r:?}");
    // /link-check and /check/offer: the same cap.
    let big = format!("{{\"token\": \"{}\"}}", "x".repeat(300 * 1024));
    let r = http_request(
        server.addr,
        "POST",
        "/link-check",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    let r = http_request(
        server.addr,
        "POST",
        "/check/offer",
        &[("Content-Type", "application/json")],
        &vec![b' '; 8 * 1024 * 1024],
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    // Just under the cap is read (and answered on its merits).
    let ok = format!("{{\"title\": \"{}\"}}", "x".repeat(200 * 1024));
    let r = http_request(
        server.addr,
        "POST",
        "/api/courses",
        &json_headers,
        ok.as_bytes(),
    )
    .await;
    assert_ne!(r.status, 413, "{r:?}");
}

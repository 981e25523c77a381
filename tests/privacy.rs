//! Names, IP addresses and media never reach a log line: a whole session (join, publish,
//! subscribe, a floor taken back while the client keeps sending, forged join tokens and wrong
//! admin keys from a forwarded client address until refused, a link check and an attendance
//! export with a real token, leave) runs through the server's own logging set-up at the most verbose level the configuration allows, and the
//! captured output is searched.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;

/// A client address that reaches the server only in X-Forwarded-For / X-Real-IP.
const FORWARDED: &str = "203.0.113.99";
/// A forged join token and a guessed admin key, both sent by the test.
const FORGED: &str =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiJndWVzcyJ9.Zm9yZ2VkLXNpZ25hdHVyZS1ndWVzcy0wMDE";
const WRONG_KEY: &str = "guessed-admin-key-31337";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_names_addresses_or_media_in_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    // The most the configuration allows: `trace` for every target. Every lower level logs a
    // subset of this, so one run covers them all. The libraries stay capped by construction.
    tracing::subscriber::set_global_default(kursrelay::logging::subscriber("trace", move || {
        writer.clone()
    }))
    .unwrap();

    // Behind a trusted proxy, so client addresses arrive in headers too.
    let server = TestServer::spawn_with(
        "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[abuse]\nauth_failures = 2\npenalty_ms = 10\n",
    )
    .await;
    let leader_token = server
        .token(
            "privacy",
            kursrelay::protocol::Role::Leader,
            Some("Ingrid Kvalsund"),
            false,
        )
        .await;
    let leader = TestPeer::connect(&server, &leader_token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    leader.publish(PublishSpec::default()).await;
    let patient = TestPeer::join(&server, "privacy", "Bjørnar Haugen").await;
    let camera = patient.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || patient.received_count(&camera) > 10).await);

    // A participant given the floor, then taken back while their client keeps sending: the
    // case that once logged every packet with its payload.
    let kari = TestPeer::join(&server, "privacy", "Kari Nordmo").await;
    leader
        .send(json!({"type": "grant_floor", "member_id": kari.member_id}))
        .await;
    kari.wait_msg(|m| m["type"] == "floor" && m["granted"] == true)
        .await;
    let sent = kari.publish(PublishSpec::default()).await;
    let kari_cam = patient.wait_offered(&kari.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || patient.received_count(&kari_cam) > 10).await);
    leader
        .send(json!({"type": "revoke_floor", "member_id": kari.member_id}))
        .await;
    kari.wait_msg(|m| m["type"] == "floor" && m["granted"] == false)
        .await;
    let discarded_before = server.metric(|m| &m.packets_discarded);
    // Media that is read and thrown away (≈ 100 packets a second) while the client keeps
    // sending.
    eventually("Kari's media read and discarded", TIMEOUT, || {
        server.metric(|m| &m.packets_discarded) > discarded_before + 100
    })
    .await;
    eventually("the client kept sending", TIMEOUT, || {
        sent[1].sent.lock().unwrap().len() > 150
    })
    .await;
    let notice = kari
        .wait_msg(|m| m["type"] == "error" && m["code"] == "forbidden")
        .await;
    assert!(notice["message"]
        .as_str()
        .unwrap()
        .contains("not forwarded"));

    // Abuse from a forwarded address: forged join tokens until refused, wrong admin keys until
    // refused, a link check and an attendance export with the leader's real token.
    for _ in 0..3 {
        let mut ws = WsClient::connect_with(&server, &[("X-Forwarded-For", FORWARDED)])
            .await
            .unwrap();
        ws.send(json!({"type": "hello", "version": 1})).await;
        ws.send(json!({"type": "join", "token": FORGED})).await;
        ws.recv_type("error").await;
    }
    for _ in 0..3 {
        let auth = format!("Bearer {WRONG_KEY}");
        let r = http_request(
            server.addr,
            "GET",
            "/api/courses",
            &[("X-Forwarded-For", FORWARDED), ("Authorization", &auth)],
            b"",
        )
        .await;
        assert!(r.status == 401 || r.status == 429);
    }
    let check = json!({"token": leader_token}).to_string();
    let r = http_request(
        server.addr,
        "POST",
        "/link-check",
        &[
            ("X-Real-IP", FORWARDED),
            ("Content-Type", "application/json"),
        ],
        check.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let session = server.session("privacy").await;
    let auth = format!("Bearer {leader_token}");
    let r = http_request(
        server.addr,
        "GET",
        &format!("/api/sessions/{session}/attendance"),
        &[("X-Forwarded-For", FORWARDED), ("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    patient.leave().await;
    patient.wait_msg(|m| m["type"] == "bye").await;
    kari.close().await;
    leader.close().await;
    server.shutdown().await;

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("member joined") && log.contains("track published"),
        "logging is not on:\n{log}"
    );
    for secret in [
        "Ingrid",
        "Kvalsund",
        "Bjørnar",
        "Haugen",
        "Kari",
        "Nordmo",
        "127.0.0.1",
        FORWARDED,
    ] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{secret:?} reached the log:\n{}",
            leaks.join("\n")
        );
    }
    // No credential either: the join token (and its signature alone), the admin key.
    let signature = leader_token.rsplit('.').next().unwrap();
    for secret in [
        leader_token.as_str(),
        signature,
        ADMIN_KEY,
        FORGED,
        FORGED.rsplit('.').next().unwrap(),
        WRONG_KEY,
    ] {
        assert!(!log.contains(secret), "a credential reached the log");
    }
    let dumps: Vec<&str> = log.lines().filter(|l| looks_like_a_dump(l)).collect();
    assert!(
        dumps.is_empty(),
        "media reached the log:\n{}",
        dumps.join("\n")
    );
}

/// A byte string (`b"…"` with content) or a list of eight or more numbers: how `Debug` shows
/// a packet's payload. Checked here independently of the redacting writer.
fn looks_like_a_dump(line: &str) -> bool {
    if line.contains("OnRtpPacket") || line.contains("payload:") {
        return true;
    }
    if let Some(at) = line.find("b\"") {
        if line[at + 2..].find('"').is_none_or(|end| end > 4) {
            return true;
        }
    }
    let mut run = 0;
    for token in line.split([',', ' ', '[', ']']) {
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            run += 1;
            if run >= 8 {
                return true;
            }
        } else if !token.is_empty() {
            run = 0;
        }
    }
    false
}

//! Bad input over the real WebSocket: each mistake gets its documented error, the connection
//! stays usable (or is closed cleanly where the protocol says so), and other sessions keep
//! receiving media throughout.

mod common;

use std::time::Duration;

use common::*;
use kursrelay::protocol::Role;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn expect_error(ws: &mut WsClient, code: &str) -> serde_json::Value {
    let msg = ws.recv_type("error").await;
    assert_eq!(msg["code"], code, "{msg}");
    assert!(msg["message"].as_str().is_some_and(|m| !m.is_empty()));
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors_and_others_keep_receiving() {
    let server = TestServer::spawn().await;
    // A healthy session running meanwhile.
    let leader = TestPeer::leader(&server, "healthy", "Kursleiar").await;
    leader.publish(PublishSpec::default()).await;
    let viewer = TestPeer::join(&server, "healthy", "Kari").await;
    let camera = viewer.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || viewer.received_count(&camera) > 10).await);

    let token = server
        .token("abuse", Role::Participant, Some("Ola"), false)
        .await;
    let open = server.token("abuse", Role::Participant, None, true).await;
    let mut ws = WsClient::connect(&server).await;
    // Before hello.
    ws.send(json!({"type": "join", "token": token})).await;
    expect_error(&mut ws, "out_of_order").await;
    ws.send_text("{not json").await;
    expect_error(&mut ws, "bad_json").await;
    ws.send_text("[1, 2, 3]").await;
    expect_error(&mut ws, "bad_json").await;
    ws.send(json!({"no_type": true})).await;
    expect_error(&mut ws, "bad_message").await;
    ws.send(json!({"type": "teleport"})).await;
    expect_error(&mut ws, "unknown_type").await;
    ws.send(json!({"type": "hello"})).await;
    let e = expect_error(&mut ws, "bad_message").await;
    assert_eq!(e["request"], "hello");
    ws.send_text(format!(
        "{{\"type\": \"hello\", \"pad\": \"{}\"}}",
        "x".repeat(70 * 1024)
    ))
    .await;
    expect_error(&mut ws, "too_large").await;

    // Still usable: a proper hello and join work.
    ws.send(json!({"type": "hello", "version": 1})).await;
    ws.recv_type("welcome").await;
    ws.send(json!({"type": "hello", "version": 1})).await;
    expect_error(&mut ws, "out_of_order").await;
    ws.send(json!({"type": "publish_offer", "sdp": "v=0"}))
        .await;
    expect_error(&mut ws, "out_of_order").await;
    ws.send(json!({"type": "join", "token": "not.a.token"}))
        .await;
    expect_error(&mut ws, "bad_token").await;
    ws.send(json!({"type": "join", "session": "abuse", "name": "Ola", "role": "leader"}))
        .await;
    expect_error(&mut ws, "bad_message").await;
    // A blank name is no name (allowed: tests/roster.rs); a control character is refused.
    ws.send(json!({"type": "join", "token": open, "name": "Kari\u{7}"}))
        .await;
    expect_error(&mut ws, "bad_request").await;
    ws.send(json!({"type": "join", "token": token, "name": "x".repeat(65)}))
        .await;
    expect_error(&mut ws, "bad_request").await;
    ws.send(json!({"type": "join", "token": token})).await;
    let joined = ws.recv_type("joined").await;
    assert_eq!(joined["simulcast"], true, "{joined}");
    ws.send(json!({"type": "join", "token": token})).await;
    expect_error(&mut ws, "already_joined").await;

    // The viewer's video preference (issue 20): bad values are refused and change nothing.
    for bad in [
        json!({"type": "video_preference", "max_height": 0}),
        json!({"type": "video_preference", "max_height": 100_000}),
        json!({"type": "video_preference", "max_height": -5}),
        json!({"type": "video_preference", "max_height": "720p"}),
        json!({"type": "video_preference", "save_data": "yes"}),
        // Its own order of the videos: track ids, each once, at most 16.
        json!({"type": "video_preference", "order": ["the interpreter"]}),
        json!({"type": "video_preference", "order": "9a1e5c2e-aa00-4b5e-9f00-1234567890ab"}),
        json!({"type": "video_preference", "order": [
            "9a1e5c2e-aa00-4b5e-9f00-1234567890ab", "9a1e5c2e-aa00-4b5e-9f00-1234567890ab"]}),
        json!({"type": "video_preference", "order":
            (0..17).map(|_| uuid::Uuid::new_v4().to_string()).collect::<Vec<_>>()}),
    ] {
        ws.send(bad.clone()).await;
        let e = expect_error(&mut ws, "bad_message").await;
        assert_eq!(e["request"], "video_preference", "{bad} → {e}");
    }
    ws.send(json!({"type": "video_preference", "max_height": 360, "save_data": false}))
        .await;
    assert_eq!(ws.recv_type("ok").await["request"], "video_preference");
    ws.send(json!({"type": "video_preference", "max_height": null, "save_data": true}))
        .await;
    assert_eq!(ws.recv_type("ok").await["request"], "video_preference");
    // A track it does not receive (yet, or any more) in its order is no mistake.
    let order: Vec<String> = (0..16).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    ws.send(json!({"type": "video_preference", "order": order}))
        .await;
    assert_eq!(ws.recv_type("ok").await["request"], "video_preference");

    // Media mistakes.
    ws.send(json!({"type": "subscribe_answer", "sdp": "v=0\r\n"}))
        .await;
    let e = expect_error(&mut ws, "no_offer_pending").await;
    assert_eq!(e["request"], "subscribe_answer");
    ws.send(json!({"type": "publish_offer", "sdp": "this is not SDP"}))
        .await;
    expect_error(&mut ws, "bad_sdp").await;
    ws.send(json!({"type": "publish_offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"})).await;
    expect_error(&mut ws, "bad_sdp").await;
    ws.send(json!({"type": "ice_candidate", "target": "subscribe", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}})).await;
    expect_error(&mut ws, "no_connection").await;
    ws.send(json!({"type": "unpublish", "track_id": "nope"}))
        .await;
    expect_error(&mut ws, "unknown_track").await;
    ws.ws_send_binary(vec![1, 2, 3]).await;
    expect_error(&mut ws, "bad_message").await;

    // The healthy session never noticed.
    let before = viewer.received_count(&camera);
    assert!(wait_until(TIMEOUT, || viewer.received_count(&camera) > before + 20).await);
    ws.send(json!({"type": "leave"})).await;
    assert_eq!(ws.recv_type("bye").await["reason"], "left");
    assert!(ws.recv().await.is_none(), "server should close after bye");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_closes_the_connection() {
    let server = TestServer::spawn().await;
    let mut ws = WsClient::connect(&server).await;
    ws.send(json!({"type": "hello", "version": 99})).await;
    expect_error(&mut ws, "unsupported_version").await;
    assert!(ws.recv().await.is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_disconnected() {
    let server =
        TestServer::spawn_with("[signalling]\nmessages_per_second = 5\nmessage_burst = 20\n").await;
    let mut ws = WsClient::connect(&server).await;
    for _ in 0..100 {
        ws.send(json!({"type": "teleport"})).await;
    }
    let mut codes = Vec::new();
    while let Some(msg) = ws.recv().await {
        codes.push(msg["code"].as_str().unwrap_or_default().to_owned());
    }
    let answered = codes.iter().filter(|c| *c == "unknown_type").count();
    assert!((20..40).contains(&answered), "{codes:?}");
    assert_eq!(codes.last().map(String::as_str), Some("rate_limited"));
    // The server still serves others.
    let mut other = WsClient::connect(&server).await;
    other
        .hello_join(
            &server
                .token(
                    "after-flood",
                    kursrelay::protocol::Role::Participant,
                    Some("Per"),
                    false,
                )
                .await,
        )
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_closes_only_that_socket() {
    let server = TestServer::spawn().await;
    let mut ws = WsClient::connect(&server).await;
    // The server may close while the frame is still being written: ignore the send's result.
    let _ = ws.try_send_text("x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(
        ws.close_code().await,
        Some(1009),
        "the documented close code"
    );
    let mut other = WsClient::connect(&server).await;
    other
        .hello_join(
            &server
                .token(
                    "still-up",
                    kursrelay::protocol::Role::Participant,
                    Some("Per"),
                    false,
                )
                .await,
        )
        .await;
    server.shutdown().await;
}

async fn http_get(server: &TestServer, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_web_client_are_served() {
    let server = TestServer::spawn().await;
    let health = http_get(&server, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let metrics = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("kursrelay_peer_connections 0"),
        "{metrics}"
    );
    assert!(metrics.contains("kursrelay_rooms 0"), "{metrics}");
    let index = http_get(&server, "/").await;
    assert!(
        index.starts_with("HTTP/1.1 200") && index.contains("<html"),
        "{index}"
    );
    let missing = http_get(&server, "/nope.html").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    server.shutdown().await;
}

/// Issue 21, point 12: a socket the server hears nothing from (no message, no pong) is closed
/// with a close frame (1000, reason "idle timeout"), between the idle timeout and one ping
/// interval later (it is checked at ping ticks). The client here is raw TCP after the
/// handshake: it never answers a ping (a WebSocket library would, whenever it reads), and it
/// writes nothing, so the server's close reaches it rather than a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_gets_a_close_frame_after_the_idle_timeout() {
    let server =
        TestServer::spawn_with("[signalling]\nping_interval_ms = 200\nidle_timeout_ms = 1000\n")
            .await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let quiet = std::time::Instant::now();
    let mut bytes = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut bytes))
        .await
        .expect("the server never closed the silent socket")
        .unwrap();
    let closed_after = quiet.elapsed();
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no handshake reply")
        + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    // Server frames are unmasked: FIN|opcode, length (< 126 here), payload.
    let mut frames = &bytes[head_end..];
    let mut close = None;
    while frames.len() >= 2 {
        let (opcode, len) = (frames[0] & 0x0f, usize::from(frames[1] & 0x7f));
        let payload = &frames[2..2 + len];
        if opcode == 0x8 {
            close = Some((
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ));
        }
        frames = &frames[2 + len..];
    }
    assert_eq!(
        close,
        Some((1000, "idle timeout".to_owned())),
        "{:?}",
        &bytes[head_end..]
    );
    assert!(
        closed_after >= Duration::from_millis(1000),
        "{closed_after:?}"
    );
    server.shutdown().await;
}

//! What an outside client, written only from docs/protocol.md, must be able to rely on: the
//! floor can be given, taken back and given again whatever the client does with its publish
//! connection; a publish connection ending never ends the membership; a client that stops
//! answering is removed; a withdrawn invite removes its holder; and the smaller promises of
//! the contract (close codes, error codes, candidates' m-lines). All through the real protocol
//! with real webrtc-rs peers.

mod common;

use std::time::Duration;

use common::*;
use kursrelay::protocol::Role;
use serde_json::json;

/// Leader publishing, participant Kari with the floor publishing, watcher Per receiving Kari's
/// camera. Returns Kari's camera track id as Per sees it.
async fn kari_on_the_floor(
    server: &TestServer,
    label: &str,
) -> (
    TestPeer,
    TestPeer,
    TestPeer,
    Vec<std::sync::Arc<SentTrack>>,
    String,
) {
    let leader = TestPeer::leader(server, label, "Kursleiar").await;
    let kari = TestPeer::join(server, label, "Kari").await;
    let per = TestPeer::join(server, label, "Per").await;
    grant(&leader, &kari).await;
    let sent = kari.publish(PublishSpec::default()).await;
    let cam = per.wait_offered(&kari.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || per.received_count(&cam) > 10).await);
    (leader, kari, per, sent, cam)
}

async fn grant(leader: &TestPeer, who: &TestPeer) {
    let n = who.inbox_len();
    leader
        .send(json!({"type": "grant_floor", "member_id": who.member_id}))
        .await;
    who.wait_msg_after(n, |m| m["type"] == "floor" && m["granted"] == true)
        .await;
}

async fn revoke(leader: &TestPeer, who: &TestPeer, watcher: &TestPeer, track: &str) {
    let n = who.inbox_len();
    leader
        .send(json!({"type": "revoke_floor", "member_id": who.member_id}))
        .await;
    who.wait_msg_after(n, |m| m["type"] == "floor" && m["granted"] == false)
        .await;
    assert!(
        wait_until(TIMEOUT, || !watcher
            .offered()
            .iter()
            .any(|t| t.track_id.to_string() == track))
        .await,
        "the revoked track is still offered"
    );
}

/// Waits for a new camera track of `who` (not `old`) at `watcher` with decodable media on it.
/// More than one new camera track can be offered for a moment: a grant re-forwards the old
/// connection's paused tracks under new ids, and a new publish connection then replaces them.
/// The one that counts is the one whose media arrives.
async fn new_camera_flows(
    watcher: &TestPeer,
    who: &TestPeer,
    old: &str,
    sent: &SentTrack,
) -> String {
    let mut found = None;
    let ok = wait_until(TIMEOUT, || {
        found = watcher
            .offered()
            .into_iter()
            .filter(|t| {
                t.member_id.to_string() == who.member_id
                    && t.track_id.to_string() != old
                    && t.kind == kursrelay::protocol::MediaKind::Video
            })
            .map(|t| t.track_id.to_string())
            .find(|t| watcher.received_count(t) > 10);
        found.is_some()
    })
    .await;
    assert!(
        ok,
        "no media on a new camera track after the floor came back; offered: {:?}",
        watcher.offered()
    );
    let track = found.unwrap();
    check_delivery(watcher, &track, sent);
    track
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_again_while_the_client_kept_sending_on_the_same_connection() {
    let server = TestServer::spawn().await;
    let (leader, kari, per, sent, cam) = kari_on_the_floor(&server, "regrant-keep").await;
    for _ in 0..2 {
        revoke(&leader, &kari, &per, &cam).await;
        // Kari's client does nothing but keep sending: told once that it is not forwarded.
        let notice = kari
            .wait_msg(|m| {
                m["type"] == "error" && m["code"] == "forbidden" && m["request"].is_null()
            })
            .await;
        assert!(notice["message"]
            .as_str()
            .unwrap()
            .contains("not forwarded"));
        grant(&leader, &kari).await;
        new_camera_flows(&per, &kari, &cam, &sent[0]).await;
    }
    assert!(server.metric(|m| &m.packets_discarded) > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_again_after_stopping_and_re_offering_the_same_tracks() {
    let server = TestServer::spawn().await;
    let (leader, kari, per, sent, cam) = kari_on_the_floor(&server, "regrant-reoffer").await;
    let mut old = cam;
    for _ in 0..2 {
        revoke(&leader, &kari, &per, &old).await;
        kari.pause_media(true);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        grant(&leader, &kari).await;
        kari.pause_media(false);
        kari.reoffer().await;
        old = new_camera_flows(&per, &kari, &old, &sent[0]).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_again_on_a_new_publish_connection() {
    let server = TestServer::spawn().await;
    let (leader, kari, per, _sent, cam) = kari_on_the_floor(&server, "regrant-newpc").await;
    revoke(&leader, &kari, &per, &cam).await;
    kari.pause_media(true);
    grant(&leader, &kari).await;
    kari.pause_media(false);
    // A new RTCPeerConnection: it replaces the old one, whose tracks end.
    let sent = kari.publish(PublishSpec::default()).await;
    let closed = kari.wait_msg(|m| m["type"] == "publish_closed").await;
    assert_eq!(closed["reason"], "replaced");
    new_camera_flows(&per, &kari, &cam, &sent[0]).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_connection_ending_keeps_the_member() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "pubclose", "Kursleiar").await;
    leader.publish(PublishSpec::default()).await;
    let rep = TestPeer::join_as(&server, "pubclose", Role::Representative, "Rep").await;
    let watcher = TestPeer::join(&server, "pubclose", "Per").await;
    rep.publish(PublishSpec::default()).await;
    let rep_cam = watcher.wait_offered(&rep.member_id, "camera").await;
    let lead_cam = rep.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || watcher.received_count(&rep_cam) > 5).await);

    // The connection dies without a word (tab's pc.close()): only its tracks end.
    rep.close_publish_pc().await;
    let closed = rep.wait_msg(|m| m["type"] == "publish_closed").await;
    assert_eq!(closed["reason"], "failed");
    assert!(
        wait_until(TIMEOUT, || !watcher
            .offered()
            .iter()
            .any(|t| t.track_id.to_string() == rep_cam))
        .await
    );
    let before = rep.received_count(&lead_cam);
    assert!(
        wait_until(TIMEOUT, || rep.received_count(&lead_cam) > before + 20).await,
        "the representative no longer receives"
    );
    assert!(!rep.inbox().iter().any(|m| m["type"] == "bye"));

    // It can publish again; and the explicit way to close is `close_publish`.
    rep.publish(PublishSpec::default()).await;
    watcher.wait_offered(&rep.member_id, "camera").await;
    rep.send(json!({"type": "close_publish"})).await;
    let n = rep.inbox_len();
    let closed = rep
        .wait_msg_after(n.saturating_sub(3), |m| {
            m["type"] == "publish_closed" && m["reason"] == "requested"
        })
        .await;
    assert_eq!(closed["reason"], "requested");
    assert!(
        wait_until(TIMEOUT, || !watcher
            .offered()
            .iter()
            .any(|t| t.member_id.to_string() == rep.member_id))
        .await
    );
    rep.send(json!({"type": "close_publish"})).await;
    let err = rep
        .wait_msg(|m| m["type"] == "error" && m["request"] == "close_publish")
        .await;
    assert_eq!(err["code"], "no_connection");
    let roster = leader
        .inbox()
        .into_iter()
        .rev()
        .find(|m| m["type"] == "roster")
        .unwrap();
    assert_eq!(roster["members"].as_array().unwrap().len(), 3, "{roster}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_is_told_then_removed() {
    let server = TestServer::spawn_with("[signalling]\nanswer_timeout_ms = 400\n").await;
    let leader = TestPeer::leader(&server, "deaf", "Kursleiar").await;
    let token = server
        .token("deaf", Role::Participant, Some("Ola"), false)
        .await;
    let deaf = TestPeer::connect(&server, &token, None).await;
    deaf.ignore_offers().await;
    leader.publish(PublishSpec::default()).await;
    let timeout = deaf
        .wait_msg(|m| m["type"] == "error" && m["code"] == "answer_timeout")
        .await;
    assert_eq!(timeout["request"], "subscribe_answer");
    let bye = deaf.wait_msg(|m| m["type"] == "bye").await;
    assert_eq!(bye["reason"], "unresponsive");
    // Offered three times in all, then gone from the roster.
    let offers = deaf
        .inbox()
        .iter()
        .filter(|m| m["type"] == "subscribe_offer")
        .count();
    assert_eq!(offers, 3, "{:#?}", deaf.inbox());
    assert!(
        wait_until(TIMEOUT, || deaf.socket_closed()).await,
        "the socket stays open"
    );
    let n = leader.inbox_len();
    leader
        .wait_msg_after(n.saturating_sub(5), |m| {
            m["type"] == "roster" && m["members"].as_array().unwrap().len() == 1
        })
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_invite_removes_its_holder_at_once() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "revoke-live", "Kursleiar").await;
    let (invite, token) = server
        .token_with("revoke-live", Role::Participant, Some("Kari"), false, None)
        .await;
    let kari = TestPeer::connect(&server, &token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    let client = reqwest_like_post(&server, &format!("/api/invites/{invite}/revoke")).await;
    assert!(client.starts_with("HTTP/1.1 200"), "{client}");
    let bye = kari.wait_msg(|m| m["type"] == "bye").await;
    assert_eq!(bye["reason"], "revoked");
    assert!(wait_until(TIMEOUT, || kari.socket_closed()).await);
    leader
        .wait_msg(|m| m["type"] == "roster" && m["members"].as_array().unwrap().len() == 1)
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_open_link_person_stays_out_after_the_room_restarts() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "remove-open", "Kursleiar").await;
    let open = server
        .token("remove-open", Role::Participant, None, true)
        .await;
    let per = TestPeer::connect(&server, &open, Some("Per")).await;
    leader
        .wait_msg(|m| m["type"] == "roster" && !m["lobby"].as_array().unwrap().is_empty())
        .await;
    leader
        .send(json!({"type": "admit", "member_id": per.member_id}))
        .await;
    let joined = per.wait_msg(|m| m["type"] == "joined").await;
    let rejoin = joined["rejoin_token"].as_str().unwrap().to_owned();
    // Admitting someone already in: the documented code.
    leader
        .send(json!({"type": "admit", "member_id": per.member_id}))
        .await;
    let err = leader
        .wait_msg(|m| m["type"] == "error" && m["request"] == "admit")
        .await;
    assert_eq!(err["code"], "unknown_member");
    leader
        .send(json!({"type": "remove", "member_id": per.member_id}))
        .await;
    assert_eq!(
        per.wait_msg(|m| m["type"] == "bye").await["reason"],
        "removed"
    );
    leader
        .wait_msg(|m| m["type"] == "ok" && m["request"] == "remove")
        .await;
    // Everyone leaves: the room closes; a fresh one must still refuse the rejoin token.
    leader.close().await;
    per.close().await;
    assert!(wait_until(TIMEOUT, || server.state.rooms.count() == 0).await);
    let back = TestPeer::connect(&server, &rejoin, None).await;
    let err = back.wait_msg(|m| m["type"] == "error").await;
    assert_eq!(err["code"], "removed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smaller_promises_of_the_contract() {
    let server = TestServer::spawn().await;
    // Chat while it is off has its own code.
    let leader = TestPeer::leader(&server, "contract", "Kursleiar").await;
    leader.send(json!({"type": "chat", "text": "Hei"})).await;
    let err = leader
        .wait_msg(|m| m["type"] == "error" && m["request"] == "chat")
        .await;
    assert_eq!(err["code"], "chat_disabled");
    // Server candidates name their m-line.
    leader.publish(PublishSpec::default()).await;
    let cand = leader
        .wait_msg(|m| m["type"] == "ice_candidate" && m["target"] == "publish")
        .await;
    assert!(
        cand["candidate"]["sdpMid"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{cand}"
    );
    assert_eq!(cand["candidate"]["sdpMLineIndex"], 0);
    let kari = TestPeer::join(&server, "contract", "Kari").await;
    let cand = kari
        .wait_msg(|m| m["type"] == "ice_candidate" && m["target"] == "subscribe")
        .await;
    assert!(
        cand["candidate"]["sdpMid"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{cand}"
    );
    // A normal goodbye closes with 1000.
    let mut ws = WsClient::connect(&server).await;
    ws.hello_join(
        &server
            .token("contract", Role::Participant, Some("Per"), false)
            .await,
    )
    .await;
    ws.send(json!({"type": "leave"})).await;
    assert_eq!(ws.recv_type("bye").await["reason"], "left");
    assert_eq!(ws.close_code().await, Some(1000));
    server.shutdown().await;
}

/// A POST with the admin key and an empty JSON body, as raw HTTP; the whole response.
async fn reqwest_like_post(server: &TestServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_microphone_stays_off_until_the_client_offers_again() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "mute", "Kursleiar").await;
    let rep = TestPeer::join_as(&server, "mute", Role::Representative, "Rep").await;
    let per = TestPeer::join(&server, "mute", "Per").await;
    rep.publish(PublishSpec::default()).await;
    let mic = per.wait_offered(&rep.member_id, "microphone").await;
    assert!(wait_until(TIMEOUT, || per.received_count(&mic) > 10).await);
    leader
        .send(json!({"type": "mute", "member_id": rep.member_id}))
        .await;
    rep.wait_msg(|m| m["type"] == "muted").await;
    // The representative's client keeps sending: the microphone is not forwarded again.
    let mics = |p: &TestPeer| {
        p.offered()
            .iter()
            .filter(|t| {
                t.member_id.to_string() == rep.member_id
                    && t.kind == kursrelay::protocol::MediaKind::Audio
            })
            .count()
    };
    eventually(
        "the muted microphone gone from Per's offer",
        TIMEOUT,
        || mics(&per) == 0,
    )
    .await;
    // The marker: the refusal notice is sent only after the server saw the muted microphone's
    // media arrive (about a second after the mute), offered its parked tracks to the room
    // again and was refused — the one moment it could have come back by itself (had it come
    // back, no notice would be sent at all).
    let notice = none_before(
        "the muted microphone came back by itself",
        || mics(&per) > 0,
        rep.wait_msg(|m| m["type"] == "error" && m["code"] == "forbidden"),
    )
    .await;
    assert!(notice["message"].as_str().unwrap().contains("microphone"));
    // Turning it on again is a new offer.
    rep.reoffer().await;
    assert!(wait_until(TIMEOUT, || mics(&per) == 1).await);
    server.shutdown().await;
}

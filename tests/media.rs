//! Media through the real server with real webrtc-rs peers: fan-out, late joiners, keyframe
//! requests, cleanup, isolation between sessions, a second video track (screen share).

mod common;

use std::time::Duration;

use common::*;

/// How many packets each subscriber must have before a test checks delivery.
const ENOUGH: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_reaches_twenty_subscribers_byte_identical_in_order() {
    let server = TestServer::spawn().await;
    let publisher = TestPeer::leader(&server, "fanout", "Kursleiar").await;
    let sent = publisher.publish(PublishSpec::default()).await;
    let mut subscribers = Vec::new();
    for i in 0..20 {
        subscribers.push(TestPeer::join(&server, "fanout", &format!("Deltakar {i}")).await);
    }
    let mut ssrcs = std::collections::HashSet::new();
    for sub in &subscribers {
        for track in sent.iter() {
            let id = sub.wait_offered(&publisher.member_id, track.source).await;
            assert!(
                wait_until(TIMEOUT, || sub.received_count(&id) >= ENOUGH).await,
                "{} got only {} packets of {}",
                sub.member_id,
                sub.received_count(&id),
                track.source
            );
            let (_, ssrc) = check_delivery(sub, &id, track);
            assert!(ssrcs.insert(ssrc), "two subscribers got the same SSRC");
        }
    }
    assert_eq!(ssrcs.len(), 40);
    // The engine sealed them itself (SRTP AES-GCM with each connection's exported keys), and
    // the webrtc-rs peers decrypted them byte-identical: our key derivation and seal interoperate.
    let metrics = server.state.sfu.metrics();
    let sealed = metrics
        .packets_sealed
        .load(std::sync::atomic::Ordering::Relaxed);
    let forwarded = metrics
        .packets_forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sealed > 0 && sealed == forwarded,
        "sealed {sealed} of {forwarded}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_media_and_its_keyframe_request_reaches_the_publisher() {
    let server = TestServer::spawn().await;
    let publisher = TestPeer::leader(&server, "late", "Kursleiar").await;
    // Keyframes only on request, so the late joiner can only start if its request got through.
    let spec = PublishSpec {
        keyframe_every: u32::MAX,
        ..PublishSpec::default()
    };
    let sent = publisher.publish(spec).await;
    let camera = sent.iter().find(|t| t.source == "camera").unwrap().clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let plis_before = camera.plis.load(std::sync::atomic::Ordering::SeqCst);

    let late = TestPeer::join(&server, "late", "Sein").await;
    let id = late.wait_offered(&publisher.member_id, "camera").await;
    let got = wait_until(TIMEOUT, || late.received_count(&id) >= ENOUGH).await;
    let mut m = String::new();
    server.state.sfu.metrics().render(&mut m);
    assert!(
        got,
        "late joiner got no video: plis {} {m}",
        camera.plis.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        camera.plis.load(std::sync::atomic::Ordering::SeqCst) > plis_before,
        "no keyframe request reached the publisher"
    );
    check_delivery(&late, &id, &camera);
    assert!(server.metric(|m| &m.keyframe_requests_sent) >= 1);
    server.shutdown().await;
}

/// Waits until every media task and connection of the server is gone.
async fn assert_nothing_left(server: &TestServer) {
    let ok = wait_until(TIMEOUT, || server.live() == Default::default()).await;
    assert!(ok, "left behind: {:?}", server.live());
    assert!(
        wait_until(TIMEOUT, || server.state.rooms.count() == 0).await,
        "room left running"
    );
}

async fn departure_removes_tracks(how: &str) {
    let server = TestServer::spawn().await;
    let publisher = TestPeer::leader(&server, "leave", "Kursleiar").await;
    publisher.publish(PublishSpec::default()).await;
    let watcher = TestPeer::join(&server, "leave", "Ola").await;
    let id = watcher.wait_offered(&publisher.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || watcher.received_count(&id) > 0).await);
    assert!(
        server.live().forwarders == 2 && server.live().peer_connections == 2,
        "{:?}",
        server.live()
    );

    match how {
        "leave" => {
            publisher.leave().await;
            publisher
                .wait_msg(|m| m["type"] == "bye" && m["reason"] == "left")
                .await;
        }
        "socket" => publisher.drop_socket().await,
        "peer" => {
            // The publisher's only connection is its publish connection: losing it ends what
            // it sent, not its membership.
            publisher.kill_media().await;
            publisher
                .wait_msg(|m| m["type"] == "publish_closed" && m["reason"] == "failed")
                .await;
        }
        _ => unreachable!(),
    }
    // The watcher gets a new offer without the tracks, and the member list without the publisher
    // (who stays after losing only its publish connection).
    assert!(
        wait_until(TIMEOUT, || watcher.offered().is_empty()).await,
        "tracks still offered"
    );
    let members = if how == "peer" { 2 } else { 1 };
    watcher
        .wait_msg(|m| {
            m["type"] == "roster" && m["members"].as_array().is_some_and(|a| a.len() == members)
        })
        .await;
    let live = server.live();
    assert!(
        wait_until(TIMEOUT, || {
            let l = server.live();
            l.forwarders == 0 && l.peer_connections == 1
        })
        .await,
        "after {how}: {:?} (was {live:?})",
        server.live()
    );
    if how == "peer" {
        // A failing subscribe connection is the member gone: removed, told why.
        watcher.kill_media().await;
        watcher
            .wait_msg(|m| m["type"] == "bye" && m["reason"] == "peer_failed")
            .await;
        publisher
            .wait_msg(|m| {
                m["type"] == "roster" && m["members"].as_array().is_some_and(|a| a.len() == 1)
            })
            .await;
        publisher.close().await;
    }
    watcher.close().await;
    assert_nothing_left(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_removes_tracks_and_tasks() {
    departure_removes_tracks("leave").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_drop_removes_tracks_and_tasks() {
    departure_removes_tracks("socket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_failure_removes_tracks_and_tasks() {
    departure_removes_tracks("peer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_stay_isolated() {
    let server = TestServer::spawn().await;
    let molde = TestPeer::leader(&server, "molde", "Kursleiar Molde").await;
    let volda = TestPeer::leader(&server, "volda", "Kursleiar Volda").await;
    let sent_m = molde.publish(PublishSpec::default()).await;
    let sent_v = volda
        .publish(PublishSpec {
            camera: Some(VideoCodec::H264),
            ..PublishSpec::default()
        })
        .await;
    let in_molde = TestPeer::join(&server, "molde", "Kari").await;
    let in_volda = TestPeer::join(&server, "volda", "Per").await;

    let m_cam = in_molde.wait_offered(&molde.member_id, "camera").await;
    let v_cam = in_volda.wait_offered(&volda.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || in_molde.received_count(&m_cam) >= ENOUGH).await);
    assert!(wait_until(TIMEOUT, || in_volda.received_count(&v_cam) >= ENOUGH).await);
    check_delivery(&in_molde, &m_cam, &sent_m[0]);
    check_delivery(&in_volda, &v_cam, &sent_v[0]);

    // Each sees only its own session's tracks and members.
    assert!(in_molde
        .offered()
        .iter()
        .all(|t| t.member_id.to_string() == molde.member_id));
    assert!(in_volda
        .offered()
        .iter()
        .all(|t| t.member_id.to_string() == volda.member_id));
    for (peer, other) in [(&in_molde, &volda), (&in_volda, &molde)] {
        assert!(peer
            .inbox()
            .iter()
            .all(|m| !m.to_string().contains(&other.member_id)));
    }
    // One session ending leaves the other running.
    molde.close().await;
    in_molde.close().await;
    let before = in_volda.received_count(&v_cam);
    assert!(
        wait_until(TIMEOUT, || in_volda.received_count(&v_cam)
            > before + ENOUGH)
        .await
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_share_arrives_as_a_separate_video_track() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "screen", "Kursleiar").await;
    // Same codec for both video tracks, as a browser does: webrtc-rs 0.21 answers every video
    // m-line of one offer with the codec negotiated for the first (see docs/ARCHITECTURE.md).
    let spec = PublishSpec {
        screen: Some(VideoCodec::Vp8),
        ..PublishSpec::default()
    };
    let sent = leader.publish(spec).await;
    let viewer = TestPeer::join(&server, "screen", "Site Volda").await;
    let camera = viewer.wait_offered(&leader.member_id, "camera").await;
    let screen = viewer.wait_offered(&leader.member_id, "screen").await;
    let mic = viewer.wait_offered(&leader.member_id, "microphone").await;
    assert_ne!(camera, screen);
    for (id, source) in [
        (&camera, "camera"),
        (&screen, "screen"),
        (&mic, "microphone"),
    ] {
        assert!(
            wait_until(TIMEOUT, || viewer.received_count(id) >= ENOUGH).await,
            "{source}"
        );
        let track = sent.iter().find(|t| t.source == source).unwrap();
        check_delivery(&viewer, id, track);
    }
    // Stopping the screen share removes just that track.
    let screen_sent = sent.iter().find(|t| t.source == "screen").unwrap();
    leader
        .send(serde_json::json!({"type": "unpublish", "track_id": screen_sent.client_track_id}))
        .await;
    leader.wait_msg(|m| m["type"] == "unpublished").await;
    assert!(
        wait_until(TIMEOUT, || viewer.offered().len() == 2).await,
        "{:?}",
        viewer.offered()
    );
    assert!(viewer
        .offered()
        .iter()
        .all(|t| t.track_id.to_string() != screen));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_says_goodbye_and_closes_every_connection() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "shutdown", "Kursleiar").await;
    leader.publish(PublishSpec::default()).await;
    let viewer = TestPeer::join(&server, "shutdown", "Kari").await;
    let camera = viewer.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || viewer.received_count(&camera) > 10).await);
    let metrics = server.state.sfu.metrics().clone();
    let rooms = server.state.rooms.clone();
    server.shutdown().await;
    for peer in [&leader, &viewer] {
        peer.wait_msg(|m| m["type"] == "bye" && m["reason"] == "server_shutdown")
            .await;
        assert!(wait_until(TIMEOUT, || peer.socket_closed()).await);
    }
    assert_eq!(metrics.live_tasks(), Default::default());
    assert_eq!(rooms.count(), 0);
}

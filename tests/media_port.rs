//! Hostile input on the one media port (issue 9, item 8): garbage, STUN with an unknown ufrag,
//! STUN with a known ufrag but a wrong MESSAGE-INTEGRITY, DTLS garbage, RTP and RTCP from an
//! address no connection is bound to, and a flood from one address. Each is dropped and counted
//! under its reason in /metrics, nothing binds, nothing panics — and a real session on the same
//! port keeps receiving media throughout.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

fn binding_request(username: &str, integrity: Option<[u8; 20]>) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut put = |kind: u16, value: &[u8]| {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(value);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
    };
    put(0x0006, username.as_bytes());
    if let Some(mi) = integrity {
        put(0x0008, &mi);
    }
    let mut d = Vec::new();
    d.extend_from_slice(&0x0001u16.to_be_bytes());
    d.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    d.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    d.extend_from_slice(&[7u8; 12]);
    d.extend_from_slice(&attrs);
    d
}

fn dropped(server: &TestServer, reason: &str) -> u64 {
    let mut m = String::new();
    server.state.sfu.metrics().render(&mut m);
    let key = format!("kursrelay_media_datagrams_dropped_total{{reason=\"{reason}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_datagram_is_dropped_counted_and_harmless() {
    let server = TestServer::spawn().await;
    let publisher = TestPeer::leader(&server, "port", "Kursleiar").await;
    publisher.publish(PublishSpec::default()).await;
    let viewer = TestPeer::join(&server, "port", "Kari").await;
    let camera = viewer.wait_offered(&publisher.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || viewer.received_count(&camera) > 20).await);
    // A real ufrag of the server's: the one in the viewer's subscribe offer.
    let offer = viewer.wait_msg(|m| m["type"] == "subscribe_offer").await;
    let ufrag = offer["sdp"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .to_owned();
    let port = server.state.sfu.media_addrs()[0];
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |d: &[u8]| {
        attacker.send_to(d, port).unwrap();
    };

    let before = viewer.received_count(&camera);
    // Garbage: first bytes no protocol uses (RFC 7983).
    for b in [64u8, 100, 200, 255] {
        send(&[b, 1, 2, 3, 4, 5]);
    }
    // STUN with a ufrag nobody has, and STUN that is not a binding request.
    send(&binding_request("nobody:x", None));
    send(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
    // A known ufrag with a forged MESSAGE-INTEGRITY: handed to that connection, which refuses
    // it, so the address is not bound (its RTP below is still "unbound").
    send(&binding_request(&format!("{ufrag}:evil"), Some([0xab; 20])));
    // DTLS garbage, RTP and RTCP from the unbound address.
    send(&[
        22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5,
    ]);
    send(&[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3]);
    send(&[0x80, 200, 0, 6, 0, 0, 0, 9]);
    // A flood from one address: 20 000 datagrams as fast as the socket goes.
    for i in 0..20_000u32 {
        let _ = attacker.send_to(&[0x80, 96, (i >> 8) as u8, i as u8, 0, 0, 0, 0], port);
    }

    assert!(
        wait_until(TIMEOUT, || dropped(&server, "flood") > 0).await,
        "the flood was not limited"
    );
    assert!(dropped(&server, "unclassified") >= 4);
    assert!(dropped(&server, "unknown_ufrag") >= 2);
    assert!(
        dropped(&server, "unbound") >= 3,
        "the forged check bound the address: {}",
        dropped(&server, "unbound")
    );
    // The session on the same port went on receiving through all of it.
    assert!(
        wait_until(TIMEOUT, || viewer.received_count(&camera) > before + 50).await,
        "media stopped: {} → {}",
        before,
        viewer.received_count(&camera)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown().await;
}

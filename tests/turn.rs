//! TURN through a real coturn: the server hands out time-limited credentials made from the
//! shared secret (`/ice-servers.json`), the web client uses them, and with `turn.relay_only`
//! Chromium sends and receives media only through coturn (`iceTransportPolicy: "relay"`). The
//! watcher decodes video and audio, both connections' selected candidate pairs are relayed,
//! and coturn's log shows the allocations. With a wrong secret nothing connects, so the relay
//! (and its authentication) is really in the path.

mod common;

use std::time::Duration;

use common::chromium::{Chromium, Page};
use common::coturn::{Coturn, SECRET};
use common::pki::TestCa;
use common::*;
use kursrelay::protocol::Role;
use serde_json::Value;

/// The local candidate types of a page's connection's selected pair ("relay", "host", …).
async fn path_of(b: &mut Chromium, page: &Page, target: &str) -> Value {
    let js = format!(
        "(async () => {{ const pc = kursrelay.client._conn.{target}.pc; if (!pc) return null; \
         const s = await pc.getStats(); let pair = null; \
         s.forEach(r => {{ if (r.type === 'transport' && r.selectedCandidatePairId) pair = s.get(r.selectedCandidatePairId); }}); \
         if (!pair) return null; const l = s.get(pair.localCandidateId), r = s.get(pair.remoteCandidateId); \
         return {{local: l.candidateType, relayProtocol: l.relayProtocol || null, remote: r.candidateType}}; }})()"
    );
    b.wait_for(page, &js, 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sends_and_receives_media_only_through_coturn() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.server_cert(dir.path(), "turn", "localhost");
    let turn = Coturn::start(Some((&cert.cert, &cert.key))).await;
    // TURN over TLS only, as a hospital that lets nothing but port 443 out would need it.
    let urls = [format!(
        "turns:localhost:{}?transport=tcp",
        turn.tls_port.unwrap()
    )];
    let server = TestServer::spawn_with(&turn.turn_config(&urls, true)).await;
    let base = format!("http://{}", server.addr);

    // What the browser is handed: coturn's URLs and a credential coturn can recompute.
    let ice: Value =
        serde_json::from_str(&http_get_body(&format!("{base}/ice-servers.json")).await).unwrap();
    assert_eq!(ice["iceTransportPolicy"], "relay");
    let entry = &ice["iceServers"][0];
    assert_eq!(entry["urls"][0], urls[0].as_str());
    let username = entry["username"].as_str().unwrap();
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let now = kursrelay::clock::unix_now();
    assert!(
        expiry > now + 11 * 3600 && expiry <= now + 12 * 3600 + 5,
        "{username}"
    );
    assert_eq!(
        entry["credential"].as_str().unwrap(),
        kursrelay::turn::credential(SECRET, username)
    );

    let leader = server.token("turn", Role::Leader, Some("Ola"), false).await;
    let kari = server
        .token("turn", Role::Participant, Some("Kari"), false)
        .await;
    // Chromium checks the TURN server's certificate: trust the test CA's server key.
    let mut b = Chromium::launch_with(&[trust(&cert.spki)]).await;
    let publisher = b.open(&format!("{base}/publish.html#t={leader}")).await;
    let started = b.eval(&publisher, "kursrelay.start({})").await;
    assert_eq!(started["role"], "leader", "{started}");
    let watcher = b.open(&format!("{base}/watch.html#t={kari}")).await;
    b.eval(&watcher, "kursrelay.start({})").await;
    let stats = b
        .wait_for(
            &watcher,
            "kursrelay.stats().then(s => s.framesDecoded > 30 && s.audioPacketsReceived > 20 ? s : null)",
            40,
        )
        .await;
    // Frames keep coming.
    b.wait_for(
        &watcher,
        &format!(
            "kursrelay.stats().then(s => s.framesDecoded > {} ? s : null)",
            stats["framesDecoded"]
        ),
        20,
    )
    .await;

    let sub = path_of(&mut b, &watcher, "subscribe").await;
    assert_eq!(sub["local"], "relay", "watcher: {sub}");
    assert_eq!(sub["relayProtocol"], "tls", "watcher: {sub}");
    let publ = path_of(&mut b, &publisher, "publish").await;
    assert_eq!(publ["local"], "relay", "publisher: {publ}");
    assert_eq!(publ["relayProtocol"], "tls", "publisher: {publ}");
    let log = turn.log_text();
    assert!(
        log.matches("ALLOCATE processed, success").count() >= 2,
        "coturn made no allocations:\n{log}"
    );
    b.screenshot(&watcher, "turn-relay-watch").await;

    // The check page knows this server uses TURN only: no direct-UDP line to worry about.
    let check = b.open(&format!("{base}/check")).await;
    let r = b
        .wait_for(&check, "kursrelay.check.done().then(r => r)", 60)
        .await;
    assert_eq!(r["udp"]["state"], "off", "{r}");
    assert_eq!(r["tcp"]["state"], "off", "{r}");
    assert_eq!(r["turn_tcp"]["state"], "ok", "{r}");
    assert_eq!(r["turn_tcp"]["path"]["protocol"], "tls", "{r}");
    assert_eq!(r["verdict"], "check.verdict_ok", "{r}");
    assert!(
        r["code"]
            .as_str()
            .unwrap()
            .starts_with("W1-UN-IN-RN-T1-K1-B"),
        "{r}"
    );
    drop(b);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_wrong_secret_relay_only_media_does_not_connect() {
    let turn = Coturn::start(None).await;
    let urls = [format!("turn:127.0.0.1:{}?transport=udp", turn.port)];
    let config = turn
        .turn_config(&urls, true)
        .replace(SECRET, "not-the-secret-of-this-coturn");
    let server = TestServer::spawn_with(&config).await;
    let base = format!("http://{}", server.addr);
    let leader = server
        .token("wrong", Role::Leader, Some("Ola"), false)
        .await;
    let mut b = Chromium::launch().await;
    let publisher = b.open(&format!("{base}/publish.html#t={leader}")).await;
    let started = b
        .eval(
            &publisher,
            "kursrelay.start({}).then(() => 'started', e => e.code)",
        )
        .await;
    assert_eq!(started, "started");
    // For 15 s the publish connection never gets connected (the server may also reset it).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let state = b
            .eval(
                &publisher,
                "kursrelay.client ? (kursrelay.client._conn.publish.pc?.iceConnectionState ?? 'reset') : 'gone'",
            )
            .await;
        assert!(
            state != "connected" && state != "completed",
            "connected without a valid TURN credential: {state}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Because coturn refused the credential (its HMAC does not match coturn's secret).
    let log = turn.log_text();
    let refused = log.lines().any(|l| {
        l.contains("error 401: Unauthorized")
            && l.split("user <")
                .nth(1)
                .is_some_and(|u| u.starts_with(|c: char| c.is_ascii_digit()))
    });
    assert!(refused, "coturn never refused a credential:\n{log}");
    assert!(
        !log.contains("ALLOCATE processed, success"),
        "coturn allocated with a wrong secret:\n{log}"
    );
    assert_eq!(
        server.metric(|m| &m.packets_received),
        0,
        "media reached the server"
    );
    drop(b);
    server.shutdown().await;
}

/// Chromium switch that makes it accept certificates with this public key (the test CA's
/// server certificate) for HTTPS and for TURN over TLS.
fn trust(spki: &str) -> String {
    format!("--ignore-certificate-errors-spki-list={spki}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_needs_a_certificate_the_browser_trusts() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.server_cert(dir.path(), "turn", "localhost");
    let turn = Coturn::start(Some((&cert.cert, &cert.key))).await;
    let urls = [format!(
        "turns:localhost:{}?transport=tcp",
        turn.tls_port.unwrap()
    )];
    let server = TestServer::spawn_with(&turn.turn_config(&urls, false)).await;
    let check = format!("http://{}/check", server.addr);
    for (trusted, want) in [(true, "ok"), (false, "fail")] {
        let extra = if trusted {
            vec![trust(&cert.spki)]
        } else {
            vec![]
        };
        let mut b = Chromium::launch_with(&extra).await;
        let page = b.open(&check).await;
        let r = b
            .wait_for(&page, "kursrelay.check.done().then(r => r)", 60)
            .await;
        assert_eq!(r["turn_tcp"]["state"], want, "trusted {trusted}: {r}");
        if trusted {
            assert_eq!(r["turn_tcp"]["path"]["protocol"], "tls", "{r}");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_only_the_media_server_it_is_configured_for() {
    // deploy/turnserver.conf denies every peer but allowed-peer-ip (127.0.0.1 in the test).
    // A media server on another address (127.0.0.2) is out of the relay's reach even with
    // valid credentials: whoever fetches /ice-servers.json cannot use coturn as an open relay.
    let turn = Coturn::start(None).await;
    let urls = [
        format!("turn:127.0.0.1:{}?transport=udp", turn.port),
        format!("turn:127.0.0.1:{}?transport=tcp", turn.port),
    ];
    let config = format!(
        "{}[media]\nbind_ips = [\"127.0.0.2\"]\nudp_port = 0\n",
        turn.turn_config(&urls, false)
    );
    let server = TestServer::spawn_with(&config).await;
    let mut b = Chromium::launch().await;
    let page = b.open(&format!("http://{}/check", server.addr)).await;
    let r = b
        .wait_for(&page, "kursrelay.check.done().then(r => r)", 60)
        .await;
    assert_eq!(
        r["udp"]["state"], "ok",
        "direct UDP to 127.0.0.2 works: {r}"
    );
    assert_eq!(r["turn_udp"]["state"], "fail", "{r}");
    assert_eq!(r["turn_tcp"]["state"], "fail", "{r}");
    // And it failed because coturn refused the peer, not for some other reason.
    let log = turn.log_text();
    assert!(
        log.contains("403: Forbidden IP"),
        "coturn did not refuse the peer:\n{log}"
    );
    drop(b);
    server.shutdown().await;
}

async fn http_get_body(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

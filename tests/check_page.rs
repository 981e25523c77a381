//! The connectivity check page (/check) in headless Chromium against the real server and a
//! real coturn: once on an open network (every line green, the direct lines reaching the
//! configured `media.udp_port` over UDP and over ICE-TCP), once with Chromium set to send no
//! UDP except through a proxy (the `webrtc.ip_handling_policy` preference
//! `disable_non_proxied_udp`, what a locked-down hospital network amounts to), where only TCP
//! works; once against a server whose media port is reachable over TCP only (a "firewall" in
//! front of it that passes TCP and drops UDP); once against a server without TURN. Also:
//! every language has the same texts, axe finds no WCAG 2.1 A/AA violation, error screens link
//! to the page, and screenshots at three screen sizes land in target/screenshots/.

mod common;

use common::chromium::{Chromium, Page};
use common::coturn::Coturn;
use common::*;
use serde_json::Value;

async fn run_check(b: &mut Chromium, base: &str) -> (Page, Value) {
    let page = b.open(&format!("{base}/check")).await;
    let results = b
        .wait_for(&page, "kursrelay.check.done().then(r => r)", 60)
        .await;
    (page, results)
}

fn state(results: &Value, line: &str) -> String {
    results[line]["state"].as_str().unwrap_or("?").to_owned()
}

/// A port free for both UDP and TCP on 127.0.0.1 now, to configure as `media.udp_port`.
fn free_media_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The direct line `line` reached the server's media port over `protocol`.
fn assert_reached_media_port(r: &Value, line: &str, protocol: &str, port: u16) {
    assert_eq!(state(r, line), "ok", "{line}: {r}");
    let path = &r[line]["path"];
    // Straight to the server: no relay (Chromium's TCP side shows as host or prflx).
    assert!(
        path["type"] == "host" || path["type"] == "prflx",
        "{line}: {r}"
    );
    assert_eq!(path["remoteProtocol"], protocol, "{line}: {r}");
    assert_eq!(path["remotePort"], port, "{line}: {r}");
}

/// A firewall in front of the media port, on another loopback address: it passes TCP to the
/// port (a plain byte relay) and has nothing on UDP, so UDP sent there is lost.
async fn tcp_only_firewall(listen: std::net::SocketAddr, server: std::net::SocketAddr) {
    let l = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(server).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_page_on_an_open_network_and_through_turn() {
    let turn = Coturn::start(None).await;
    let urls = [
        format!("turn:127.0.0.1:{}?transport=udp", turn.port),
        format!("turn:127.0.0.1:{}?transport=tcp", turn.port),
    ];
    let port = free_media_port();
    let server = TestServer::spawn_with(&format!(
        "{}\n[media]\nudp_port = {port}\n",
        turn.turn_config(&urls, false)
    ))
    .await;
    assert_eq!(server.state.sfu.media_addrs()[0].port(), port);
    let base = format!("http://{}", server.addr);
    let mut b = Chromium::launch().await;

    let (page, r) = run_check(&mut b, &base).await;
    for line in [
        "ws",
        "udp",
        "tcp",
        "turn_udp",
        "turn_tcp",
        "devices",
        "bandwidth",
    ] {
        assert_eq!(state(&r, line), "ok", "{line}: {r}");
    }
    // Each path went the way its line says; the direct ones to the configured media port.
    assert_reached_media_port(&r, "udp", "udp", port);
    assert_reached_media_port(&r, "tcp", "tcp", port);
    assert!(
        r["udp"]["text"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "{r}"
    );
    eprintln!(
        "check: UDP line green after {} ms, ICE-TCP line after {} ms",
        r["udp"]["ms"], r["tcp"]["ms"]
    );
    assert_eq!(r["turn_udp"]["path"]["type"], "relay", "{r}");
    assert_eq!(r["turn_udp"]["path"]["protocol"], "udp", "{r}");
    assert_eq!(r["turn_tcp"]["path"]["type"], "relay", "{r}");
    assert_eq!(r["turn_tcp"]["path"]["protocol"], "tcp", "{r}");
    assert!(r["bandwidth"]["mbps"].as_f64().unwrap() >= 1.5, "{r}");
    assert_eq!(r["bandwidth"]["loss"], 0, "{r}");
    assert_eq!(r["verdict"], "check.verdict_ok", "{r}");
    let code = r["code"].as_str().unwrap();
    assert!(code.starts_with("W1-U1-I1-R1-T1-K1-B"), "{code}");
    assert!(code.ends_with("-L0"), "{code}");
    // Read aloud to IT support: no decimal point in the code, nor in the Norwegian text.
    assert!(!code.contains('.') && !code.contains(','), "{code}");
    let speed = r["bandwidth"]["text"].as_str().unwrap_or_default();
    assert!(
        !speed
            .as_bytes()
            .windows(3)
            .any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit()),
        "{speed}"
    );
    // The page shows what the results say, and the code.
    let shown = b
        .eval(&page, "document.querySelector('#code').textContent")
        .await;
    assert_eq!(shown, code);
    let lines = b
        .eval(
            &page,
            "[...document.querySelectorAll('#checks li')].map(li => li.dataset.state + ' ' + li.textContent)",
        )
        .await;
    assert_eq!(lines.as_array().unwrap().len(), 7, "{lines}");
    assert!(lines[0].as_str().unwrap().contains("Virker"), "{lines}");
    // coturn really relayed: allocations were made with the server's credentials.
    let log = turn.log_text();
    assert!(log.contains("ALLOCATE"), "no allocation in coturn's log");

    let violations = b.axe(&page).await;
    assert!(violations.is_empty(), "axe on /check: {violations:?}");
    for (w, h, name) in [
        (1920, 1080, "check-1920"),
        (1366, 768, "check-1366"),
        (390, 844, "check-390"),
    ] {
        b.call(
            Some(page.session()),
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": w, "height": h, "deviceScaleFactor": 1, "mobile": w < 500}),
        )
        .await;
        let overflow = b
            .eval(
                &page,
                "document.documentElement.scrollWidth > window.innerWidth",
            )
            .await;
        assert_eq!(overflow, false, "/check scrolls sideways at {w}×{h}");
        b.screenshot(&page, name).await;
    }

    // Other languages: same lines, other words.
    b.eval(&page, "(() => { const s = document.querySelector('#lang'); s.value = 'en'; s.dispatchEvent(new Event('change')); return true; })()").await;
    let en = b
        .eval(
            &page,
            "document.querySelector('#checks li .state').textContent",
        )
        .await;
    assert_eq!(en, "✓ Works");
    let same_keys = b
        .eval(
            &page,
            "import('/check-i18n.js').then(m => { const k = (l) => Object.keys(m.CHECK_TEXTS[l]).sort().join(); \
             return k('nb') === k('nn') && k('nb') === k('en'); })",
        )
        .await;
    assert_eq!(
        same_keys, true,
        "check texts differ in keys between languages"
    );

    // An error screen links to the check: a dead link's full-page message.
    let watch = b.open(&format!("{base}/course.html#t=not-a-token")).await;
    let href = b
        .wait_for(
            &watch,
            "document.querySelector('#link-problem:not([hidden]) a.check-link')?.getAttribute('href')",
            15,
        )
        .await;
    assert_eq!(href, "/check");
    b.screenshot(&watch, "error-with-check-link").await;
    drop(b);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_page_when_udp_is_blocked_finds_the_tcp_fallback() {
    let turn = Coturn::start(None).await;
    let urls = [
        format!("turn:127.0.0.1:{}?transport=udp", turn.port),
        format!("turn:127.0.0.1:{}?transport=tcp", turn.port),
    ];
    let server = TestServer::spawn_with(&turn.turn_config(&urls, false)).await;
    // The browser setting a locked-down network amounts to: no UDP except through a proxy.
    let mut b = Chromium::launch_with_prefs(
        &[],
        Some(serde_json::json!({"webrtc": {"ip_handling_policy": "disable_non_proxied_udp"}})),
    )
    .await;
    let (page, r) = run_check(&mut b, &format!("http://{}", server.addr)).await;
    assert_eq!(state(&r, "ws"), "ok", "{r}");
    assert_eq!(state(&r, "udp"), "fail", "{r}");
    assert_eq!(state(&r, "turn_udp"), "fail", "{r}");
    assert_eq!(state(&r, "turn_tcp"), "ok", "{r}");
    assert_eq!(r["turn_tcp"]["path"]["protocol"], "tcp", "{r}");
    assert_ne!(state(&r, "bandwidth"), "running", "{r}");
    assert!(r["bandwidth"]["mbps"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert_eq!(r["verdict"], "check.verdict_partly", "{r}");
    let code = r["code"].as_str().unwrap();
    // Chromium still makes TCP connections: ICE-TCP on the media port works, and says so.
    assert_reached_media_port(&r, "tcp", "tcp", server.state.sfu.media_addrs()[0].port());
    assert!(code.starts_with("W1-U0-I1-R0-T1-K1-B"), "{code}");
    // The red lines say what to do, with the TURN server's real port.
    assert!(r["udp"]["text"].as_str().unwrap().contains("UDP"), "{r}");
    let port = format!("UDP {}", turn.port);
    assert!(
        r["turn_udp"]["text"].as_str().unwrap().contains(&port),
        "{r}"
    );
    b.screenshot(&page, "check-udp-blocked").await;
    drop(b);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_page_without_turn_says_so() {
    let server = TestServer::spawn().await;
    let mut b = Chromium::launch().await;
    let (_page, r) = run_check(&mut b, &format!("http://{}", server.addr)).await;
    assert_eq!(state(&r, "udp"), "ok", "{r}");
    assert_eq!(state(&r, "turn_udp"), "off", "{r}");
    assert_eq!(state(&r, "turn_tcp"), "off", "{r}");
    assert!(
        r["code"]
            .as_str()
            .unwrap()
            .starts_with("W1-U1-I1-RN-TN-K1-B"),
        "{r}"
    );
    assert_eq!(r["verdict"], "check.verdict_ok", "{r}");
    drop(b);
    server.shutdown().await;

    // No TURN, no UDP, and a server that offers no ICE-TCP: nothing carries media; the page
    // says so and what to ask for.
    let server = TestServer::spawn_with("[media]\ntransports = [\"udp\"]\n").await;
    let mut b = Chromium::launch_with_prefs(
        &[],
        Some(serde_json::json!({"webrtc": {"ip_handling_policy": "disable_non_proxied_udp"}})),
    )
    .await;
    let (page, r) = run_check(&mut b, &format!("http://{}", server.addr)).await;
    assert_eq!(state(&r, "udp"), "fail", "{r}");
    assert_eq!(state(&r, "tcp"), "off", "{r}");
    assert_eq!(state(&r, "turn_tcp"), "fail", "{r}");
    assert!(
        r["turn_tcp"]["text"].as_str().unwrap().contains("443"),
        "{r}"
    );
    assert_eq!(state(&r, "bandwidth"), "fail", "{r}");
    assert_eq!(r["verdict"], "check.verdict_fail", "{r}");
    assert_eq!(r["code"], "W1-U0-IN-RN-T0-K1-BN");
    b.screenshot(&page, "check-nothing-works").await;
    drop(b);
    server.shutdown().await;
}

/// Issue 21 item 6: IT opened the media port for TCP but not for UDP. The server advertises
/// its media port at 127.0.0.3 (`media.public_ips`), where a firewall passes TCP to the real
/// port and drops UDP: the UDP line is red and names the port and address to open, the
/// ICE-TCP line is green on the media port, and the course would work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_page_when_the_media_port_is_open_for_tcp_only() {
    let server = TestServer::spawn_with("[media]\npublic_ips = [\"127.0.0.3\"]\n").await;
    let media = server.state.sfu.media_addrs()[0];
    let public = std::net::SocketAddr::new([127, 0, 0, 3].into(), media.port());
    tcp_only_firewall(public, media).await;
    let mut b = Chromium::launch().await;
    let (page, r) = run_check(&mut b, &format!("http://{}", server.addr)).await;
    assert_eq!(state(&r, "udp"), "fail", "{r}");
    assert_reached_media_port(&r, "tcp", "tcp", media.port());
    let udp = r["udp"]["text"].as_str().unwrap();
    assert!(
        udp.contains(&format!("UDP {}", media.port())) && udp.contains("127.0.0.3"),
        "{r}"
    );
    assert!(udp.contains("be IT åpne"), "{r}");
    assert_ne!(state(&r, "bandwidth"), "fail", "{r}");
    assert_eq!(r["verdict"], "check.verdict_partly", "{r}");
    let code = r["code"].as_str().unwrap();
    assert!(code.starts_with("W1-U0-I1-RN-TN-K1-B"), "{code}");
    b.screenshot(&page, "check-tcp-only").await;
    drop(b);
    server.shutdown().await;
}

#[tokio::test]
async fn check_offer_rejects_bad_input() {
    let server = TestServer::spawn().await;
    let url = format!("http://{}/check/offer", server.addr);
    let cases = [
        (r#"{"type":"answer","sdp":"v=0"}"#, 422, "invalid"),
        (r#"{"type":"offer","sdp":"not sdp"}"#, 422, "invalid"),
        (r#"{"type":"offer"}"#, 422, "invalid"),
        (r#"{"type":"offer","sdp":"v=0","extra":1}"#, 422, "invalid"),
        ("not json", 400, "bad_json"),
        ("", 400, "bad_json"),
    ];
    for (body, status, error) in cases {
        let (got, text) = post_json(&url, body).await;
        assert_eq!(got, status, "{body}: {text}");
        if !error.is_empty() {
            assert!(text.contains(error), "{body}: {text}");
        }
    }
    let (got, text) = post_json(
        &format!("{url}?transport=sctp"),
        r#"{"type":"offer","sdp":"v=0"}"#,
    )
    .await;
    assert_eq!(got, 422, "{text}");
    assert!(text.contains("transport=udp"), "{text}");
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(20_000));
    let (got, text) = post_json(&url, &big).await;
    assert_eq!(got, 413, "{text}");
    assert!(text.contains("too_large"), "{text}");
    server.shutdown().await;
}

/// A bare HTTP/1.1 POST (no client library needed for two headers).
async fn post_json(url: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out)
}

#[tokio::test]
async fn pages_come_from_the_binary_or_from_http_web_root() {
    // Built in (the default): what web/ held at build time.
    let server = TestServer::spawn().await;
    let (status, body) = get(&server, "/check").await;
    assert_eq!(status, 200);
    assert_eq!(body, include_str!("../web/check.html"));
    server.shutdown().await;

    // A folder on disk instead, for working on the client without rebuilding.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("check.html"), "<p>edited check page</p>").unwrap();
    std::fs::write(dir.path().join("index.html"), "<p>edited start page</p>").unwrap();
    let overlay = format!("[http]\nweb_root = \"{}\"\n", dir.path().display());
    let server = TestServer::spawn_with(&overlay).await;
    assert_eq!(
        get(&server, "/check").await,
        (200, "<p>edited check page</p>".to_owned())
    );
    assert_eq!(
        get(&server, "/").await,
        (200, "<p>edited start page</p>".to_owned())
    );
    assert_eq!(get(&server, "/page.js").await.0, 404);
    server.shutdown().await;
}

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

//! deploy/nginx.conf as shipped, run by a real nginx (Debian's package) terminating TLS with a
//! test CA's certificate in front of the real server: pages and headers over HTTPS, the HTTP
//! redirect, /metrics kept inside, the client's address (not nginx's, not a spoofed one)
//! counted by the abuse limits, an access log without addresses or query strings, and a
//! Chromium course session (leader publishes, participant decodes video and audio) whose
//! signalling WebSocket goes through nginx.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::chromium::Chromium;
use common::coturn::free_port;
use common::pki::{https_get, https_get_with, TestCa};
use common::*;
use kursrelay::protocol::Role;

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// deploy/nginx.conf with the test's ports, certificate and log file. Every replaced line
/// must be there, so the shipped file cannot drift away from what is tested.
fn site_config(upstream: u16, http: u16, https: u16, cert: &str, key: &str, log: &str) -> String {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf")).unwrap();
    let replacements = [
        (
            "server 127.0.0.1:8080;",
            format!("server 127.0.0.1:{upstream};"),
        ),
        // nginx reaches kursrelay from 127.0.0.2, the one trusted proxy, so that the test
        // client (127.0.0.1) is not itself a trusted proxy, as on a real server.
        (
            "proxy_pass http://kursrelay;",
            "proxy_pass http://kursrelay;\n        proxy_bind 127.0.0.2;".to_owned(),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{http};")),
        ("listen [::]:80;", String::new()),
        ("listen 443 ssl;", format!("listen 127.0.0.1:{https} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        (
            "/etc/letsencrypt/live/kurs.sykehus.example/fullchain.pem",
            cert.to_owned(),
        ),
        (
            "/etc/letsencrypt/live/kurs.sykehus.example/privkey.pem",
            key.to_owned(),
        ),
        ("/var/log/nginx/kursrelay-access.log", log.to_owned()),
    ];
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "deploy/nginx.conf no longer has {from:?}"
        );
        text = text.replace(from, &to);
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_through_nginx_with_tls() {
    let nginx_bin = tools::nginx();
    let server = TestServer::spawn_with(
        "[http]\ntrusted_proxies = [\"127.0.0.2/32\"]\n\
         [abuse]\nauth_failures = 3\nauth_failures_forgiven_per_minute = 1\npenalty_ms = 10\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.server_cert(dir.path(), "nginx", "localhost");
    let (http_port, https_port) = (free_port(), free_port());
    let access_log = dir.path().join("access.log");
    let site = site_config(
        server.addr.port(),
        http_port,
        https_port,
        &cert.cert.display().to_string(),
        &cert.key.display().to_string(),
        &access_log.display().to_string(),
    );
    std::fs::write(dir.path().join("kursrelay.conf"), site).unwrap();
    let d = dir.path().display();
    // The frame a Debian nginx.conf gives conf.d files, with every path in the temp dir.
    let main = format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  access_log off;\n\
           include {d}/kursrelay.conf;\n}}\n"
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let test = Command::new(&nginx_bin)
        .args(["-t", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let _nginx = Nginx(
        Command::new(&nginx_bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    eventually_async("nginx listening", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", https_port))
            .await
            .ok()
    })
    .await;

    // Pages over HTTPS with the headers from the file.
    let (status, text, _) = https_get(&ca, https_port, "/course.html?lang=nb")
        .await
        .unwrap();
    assert!(status.contains("200"), "{status}");
    let lower = text.to_ascii_lowercase();
    for header in [
        "strict-transport-security: max-age=31536000",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "permissions-policy: camera=(self)",
    ] {
        assert!(lower.contains(header), "missing {header}: {text}");
    }
    let (status, _, _) = https_get(&ca, https_port, "/metrics").await.unwrap();
    assert!(
        status.contains("403"),
        "/metrics is reachable from outside: {status}"
    );
    let (status, text, _) = https_get(&ca, https_port, "/ice-servers.json")
        .await
        .unwrap();
    assert!(
        status.contains("200") && text.contains("iceServers"),
        "{text}"
    );

    // The client's own address reaches kursrelay's abuse limits through nginx
    // (X-Forwarded-For / X-Real-IP from the trusted proxy); what the client writes into
    // X-Forwarded-For itself does not count.
    for i in 0..4 {
        let spoof = format!("203.0.113.{i}");
        let (status, text, _) = https_get_with(
            &ca,
            https_port,
            "/api/courses",
            &[
                ("Authorization", "Bearer wrong-key"),
                ("X-Forwarded-For", &spoof),
            ],
        )
        .await
        .unwrap();
        let want = if i < 3 { "401" } else { "429" };
        assert!(status.contains(want), "request {i}: {text}");
    }
    // nginx itself (a request from 127.0.0.2 without forwarding headers) is not the one
    // counted: the budget is the client's.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = sock.connect(server.addr).await.unwrap();
        s.write_all(
            format!("GET /api/courses HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    // Plain HTTP only redirects.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .unwrap();
        s.write_all(
            b"GET /course.html?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
        assert!(
            resp.contains("Location: https://localhost/course.html?x=1"),
            "{resp}"
        );
    }

    // A course session through nginx.
    let leader = server
        .token("nginx", Role::Leader, Some("Ola"), false)
        .await;
    let kari = server
        .token("nginx", Role::Participant, Some("Kari"), false)
        .await;
    let base = format!("https://localhost:{https_port}");
    let mut b = Chromium::launch_with(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        cert.spki
    )])
    .await;
    let publisher = b.open(&format!("{base}/course.html#t={leader}")).await;
    let started = b.eval(&publisher, "kursrelay.start({})").await;
    assert_eq!(started["role"], "leader", "{started}");
    let watcher = b.open(&format!("{base}/course.html#t={kari}")).await;
    b.eval(&watcher, "kursrelay.start({})").await;
    let first = b
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
            first["framesDecoded"]
        ),
        20,
    )
    .await;
    let url = b.eval(&watcher, "kursrelay.client.url").await;
    assert_eq!(url, format!("wss://localhost:{https_port}/ws"));
    b.screenshot(&watcher, "nginx-watch").await;
    drop(b);

    // The access log: requests, but no addresses and no query strings.
    let log = std::fs::read_to_string(&access_log).unwrap();
    assert!(log.contains("\"GET /ws\" 101"), "{log}");
    assert!(log.contains("/course.html"), "{log}");
    assert!(
        !log.contains("127.0.0.1") && !log.contains("lang=nb"),
        "{log}"
    );
    server.shutdown().await;
}

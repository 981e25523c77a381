//! The binary as an operator installs it: copied alone into an empty folder and started from
//! another one, it serves the built-in web client over HTTPS with a test CA's certificate,
//! redirects plain HTTP, picks up a renewed certificate when the files change and on SIGHUP
//! (keeping the old one when the new files are broken), writes JSON log lines (or text
//! without colour codes when not on a terminal), and Chromium runs the connectivity check
//! through it (wss, WebRTC, camera and microphone in a secure context).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::chromium::Chromium;
use common::pki::{https_get, TestCa};
use common::wait::{eventually_blocking, stays_false_blocking};

/// The server process; killed if the test fails half-way.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(binary: &Path, cwd: &Path, config: &Path) -> Running {
        // A freshly copied binary can be "busy" for a moment: another test thread that forked
        // while the copy's write handle was open holds it until its exec (ETXTBSY). Retry.
        let mut attempt = 0;
        let mut child = loop {
            match Command::new(binary)
                .current_dir(cwd)
                .arg("--config")
                .arg(config)
                .env_remove("KURSRELAY_LOG")
                .stdout(Stdio::piped())
                .spawn()
            {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(26) && attempt < 50 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("start the copied binary: {e}"),
            }
        };
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output until a line starts with `prefix`; returns the rest of that line.
    fn wait_line(&mut self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line starting {prefix:?}; saw {:#?}", self.seen));
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    }

    /// Everything printed so far.
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Stops as systemd does (SIGTERM) and expects a clean exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let status = eventually_blocking(
            "the server stopping after SIGTERM",
            Duration::from_secs(15),
            || self.child.try_wait().unwrap(),
        );
        assert!(status.success(), "{status:?}");
    }
}

/// The binary, copied alone into a fresh folder (as `cargo install` or a package would).
fn installed_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("kursrelay");
    std::fs::copy(env!("CARGO_BIN_EXE_kursrelay"), &bin).unwrap();
    (dir, bin)
}

fn port_of(addr: &str) -> u16 {
    addr.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_kursrelay"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kursrelay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn text_logs_carry_no_colour_codes_when_not_on_a_terminal() {
    let (_install, bin) = installed_copy();
    let run = tempfile::tempdir().unwrap();
    let config = run.path().join("k.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nudp_port = 0\n",
    )
    .unwrap();
    let mut server = Running::start(&bin, run.path(), &config);
    server.wait_line("kursrelay listening on http://", 20);
    let lines = server.drain().to_vec();
    assert!(
        lines.iter().any(|l| l.contains("database migrated")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains('\u{1b}')),
        "colour codes in {lines:#?}"
    );
    // The database went where the config says, relative to the working directory.
    assert!(run.path().join("data/kursrelay.db").exists());
    server.stop();
}

fn leaf_of(ca: &TestCa, port: u16) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(https_get(ca, port, "/healthz"))
        .expect("https")
        .2
}

/// Waits until the server presents `want` (the certificate's DER) to new connections.
fn wait_for_cert(ca: &TestCa, port: u16, want: &[u8], secs: u64, what: &str) {
    eventually_blocking(what, Duration::from_secs(secs), || {
        (leaf_of(ca, port) == want).then_some(())
    })
}

fn mtimes(paths: &[&Path]) -> Vec<SystemTime> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect()
}

#[test]
fn copied_binary_serves_the_client_over_https_and_reloads_its_certificate() {
    let (_install, bin) = installed_copy();
    let run = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let certs = run.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let first = ca.server_cert(&certs, "server", "first");
    let config = run.path().join("production.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://kurs.example\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\nredirect_listen = \"127.0.0.1:0\"\n\
             [media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\n[db]\npath = \"state/kursrelay.db\"\n\
             [log]\nformat = \"json\"\n",
            first.cert.display(),
            first.key.display()
        ),
    )
    .unwrap();
    let mut server = Running::start(&bin, run.path(), &config);
    let addr = server.wait_line("kursrelay listening on https://", 20);
    let port = port_of(&addr);
    let redirect = server.wait_line("kursrelay redirecting http://", 5);
    let redirect = redirect.split('/').next().unwrap().to_owned();

    // The built-in client, from a folder without web/ beside the binary.
    assert!(!run.path().join("web").exists());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (path, status, needle) in [
        ("/", "200", "data-i18n=\"index.p1\""),
        ("/check", "200", "check.js"),
        ("/course.html", "200", "page.js"),
        ("/check.js", "200", "/check/offer"),
        ("/nope.html", "404", ""),
    ] {
        let (line, text, _) = rt.block_on(https_get(&ca, port, path)).expect("https get");
        assert!(line.contains(status), "{path}: {line}");
        assert!(text.contains(needle), "{path}: {text}");
    }
    assert_eq!(leaf_of(&ca, port), first.der);

    // Plain HTTP is sent to the public HTTPS address, path and query kept.
    let mut s = std::net::TcpStream::connect(&redirect).unwrap();
    use std::io::{Read, Write};
    s.write_all(
        b"GET /course.html?x=1 HTTP/1.1\r\nHost: kurs.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: https://kurs.example/course.html?x=1"),
        "{resp}"
    );

    // Chromium, trusting the test certificate, runs the connectivity check over HTTPS.
    rt.block_on(async {
        let mut b = Chromium::launch_with(&[format!(
            "--ignore-certificate-errors-spki-list={},{}",
            first.spki,
            ca.spki()
        )])
        .await;
        let page = b.open(&format!("https://localhost:{port}/check")).await;
        let r = b
            .wait_for(&page, "kursrelay.check.done().then(r => r)", 60)
            .await;
        for line in ["ws", "udp", "devices"] {
            assert_eq!(r[line]["state"], "ok", "{line}: {r}");
        }
        assert_eq!(
            b.eval(&page, "window.isSecureContext && location.protocol")
                .await,
            "https:"
        );
        b.screenshot(&page, "check-https").await;
    });

    // A renewed certificate is picked up when the files change.
    let second = ca.server_cert(&certs, "second", "second");
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    wait_for_cert(&ca, port, &second.der, 10, "the new certificate picked up");

    // Broken files: the old certificate stays, and an operator is told.
    std::fs::write(
        &first.key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    // The marker: the error is logged after the reload failed, when the server has decided
    // to keep serving the old certificate.
    eventually_blocking(
        "an error saying the certificate was not reloaded",
        Duration::from_secs(10),
        || {
            server
                .drain()
                .iter()
                .any(|l| l.contains("TLS certificate not reloaded") && l.contains("ERROR"))
                .then_some(())
        },
    );
    assert_eq!(leaf_of(&ca, port), second.der);

    // SIGHUP reloads even when the files' times did not change (e.g. restored from a copy).
    let third = ca.server_cert(&certs, "third", "third");
    let before = mtimes(&[&first.cert, &first.key]);
    std::fs::copy(&third.cert, &first.cert).unwrap();
    std::fs::copy(&third.key, &first.key).unwrap();
    for (path, t) in [&first.cert, &first.key].into_iter().zip(before) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    // A window, honestly: the server's file poll finds nothing changed and says nothing, so
    // there is no marker to wait for (RELOAD_POLL is shorter than the window).
    stays_false_blocking("reloaded without a reason", Duration::from_secs(3), || {
        leaf_of(&ca, port) != second.der
    });
    server.signal("-HUP");
    wait_for_cert(
        &ca,
        port,
        &third.der,
        5,
        "the certificate reloaded on SIGHUP",
    );

    // Every log line is one JSON object, without colour codes; no IP address in them.
    let lines = server.drain().to_vec();
    let logs: Vec<&String> = lines.iter().filter(|l| l.starts_with('{')).collect();
    assert!(logs.len() >= 3, "{lines:#?}");
    for l in &logs {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        assert!(!l.contains('\u{1b}') && !l.contains("127.0.0.1"), "{l}");
    }
    assert!(run.path().join("state/kursrelay.db").exists());
    server.stop();
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = common::tools::require(
        "systemd-analyze (unit file check)",
        &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"],
        "systemd",
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kursrelay.service"
    ))
    .unwrap();
    for must in [
        "DynamicUser=yes",
        "StateDirectory=kursrelay",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/kursrelay --config /etc/kursrelay/production.toml",
    ] {
        assert!(unit.contains(must), "deploy/kursrelay.service lacks {must}");
    }
    // verify checks that ExecStart exists: point it at the real binary. The backup service
    // and timer are checked alongside.
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in [
        "kursrelay.service",
        "kursrelay-backup.service",
        "kursrelay-backup.timer",
    ] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(name),
        )
        .unwrap();
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/kursrelay", env!("CARGO_BIN_EXE_kursrelay")),
        )
        .unwrap();
        units.push(path);
    }
    let backup = std::fs::read_to_string(&units[1]).unwrap();
    assert!(
        backup.contains("User=kursrelay") && unit.contains("User=kursrelay"),
        "the backup runs as another user"
    );
    assert!(backup.contains("db backup"));
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("kursrelay"),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn production_toml_is_a_valid_configuration() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/production.toml"
    ))
    .unwrap();
    // The secret comes from KURSRELAY_TURN_SECRET in production; without it start-up stops.
    let err =
        kursrelay::config::Config::from_overlay(Some((&text, "production.toml"))).unwrap_err();
    assert!(err.to_string().contains("turn.secret"), "{err}");
    let with_secret = text.replace("secret = \"\"", "secret = \"0123456789abcdef-from-env\"");
    let c =
        kursrelay::config::Config::from_overlay(Some((&with_secret, "production.toml"))).unwrap();
    assert!(c.http.tls_files().is_some());
    assert_eq!(c.http.listen.port(), 443);
    assert_eq!(c.log.format, kursrelay::config::LogFormat::Json);
    assert!(c
        .turn
        .urls
        .iter()
        .any(|u| u.starts_with("turns:") && u.contains(":443")));
    assert!(
        c.db.path.starts_with("/var/lib/kursrelay"),
        "db.path outside StateDirectory"
    );
}

#[test]
fn unusable_certificate_files_stop_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.server_cert(dir.path(), "good", "good");
    let other = ca.server_cert(dir.path(), "other", "other");
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            missing.clone(),
            good.key.clone(),
            "cannot read the certificate file",
        ),
        (
            good.cert.clone(),
            missing.clone(),
            "cannot read a private key",
        ),
        (
            good.cert.clone(),
            other.key.clone(),
            "does not belong to the certificate",
        ),
    ];
    for (i, (cert, key, want)) in cases.into_iter().enumerate() {
        let config = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[media]\nudp_port = 0\n[db]\npath = \"{}\"\n",
                cert.display(),
                key.display(),
                dir.path().join("k.db").display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kursrelay"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {cert:?} {key:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{cert:?} {key:?}: {err}");
    }
}

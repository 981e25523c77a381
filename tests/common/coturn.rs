//! A real coturn (Debian's `turnserver`) on loopback for the TURN tests, run with
//! deploy/turnserver.conf as shipped, its addresses, ports, certificate, secret and paths
//! replaced by the test's: shared-secret authentication (`use-auth-secret`), TURN over UDP and
//! TCP on one port and, with a certificate, over TLS on a second, relaying only to the media
//! server's address. Loopback peers are allowed on the command line, only because the media
//! server under test is on 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SECRET: &str = "test-turn-secret-0123456789";

pub struct Coturn {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A port free for both UDP and TCP on 127.0.0.1 (coturn uses both; nginx needs TCP).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Coturn {
    /// Starts coturn; `tls` = (certificate chain, key) turns on TURN over TLS.
    pub async fn start(tls: Option<(&Path, &Path)>) -> Coturn {
        let bin = super::tools::turnserver();
        let dir = tempfile::tempdir().expect("coturn dir");
        let port = free_port();
        let log = dir.path().join("turn.log");
        let tls_port = tls.map(|_| free_port());
        let d = dir.path().display();
        let mut replacements = vec![
            (
                "listening-ip=192.0.2.10".to_owned(),
                "listening-ip=127.0.0.1".to_owned(),
            ),
            (
                "relay-ip=192.0.2.10".to_owned(),
                "relay-ip=127.0.0.1".to_owned(),
            ),
            (
                "allowed-peer-ip=192.0.2.20".to_owned(),
                "allowed-peer-ip=127.0.0.1".to_owned(),
            ),
            (
                "listening-port=3478".to_owned(),
                format!("listening-port={port}"),
            ),
            ("min-port=49152".to_owned(), "min-port=40000".to_owned()),
            ("max-port=65535".to_owned(), "max-port=40999".to_owned()),
            (
                "static-auth-secret=CHANGE-ME-to-the-value-of-KURSRELAY_TURN_SECRET".to_owned(),
                format!("static-auth-secret={SECRET}"),
            ),
            (
                "log-file=/var/log/turnserver/turn.log".to_owned(),
                format!("log-file={}", log.display()),
            ),
            (
                "pidfile=/run/turnserver/turnserver.pid".to_owned(),
                format!("pidfile={d}/turn.pid"),
            ),
            (
                "userdb=/var/lib/turn/turndb".to_owned(),
                format!("userdb={d}/turndb"),
            ),
        ];
        match (tls, tls_port) {
            (Some((cert, key)), Some(tls_port)) => replacements.extend([
                (
                    "tls-listening-port=443".to_owned(),
                    format!("tls-listening-port={tls_port}"),
                ),
                (
                    "cert=/etc/coturn/tls/fullchain.pem".to_owned(),
                    format!("cert={}", cert.display()),
                ),
                (
                    "pkey=/etc/coturn/tls/privkey.pem".to_owned(),
                    format!("pkey={}", key.display()),
                ),
            ]),
            _ => replacements.push(("tls-listening-port=443".to_owned(), "no-tls".to_owned())),
        }
        let mut conf = std::fs::read_to_string(super::repo_root().join("deploy/turnserver.conf"))
            .expect("deploy/turnserver.conf");
        for (from, to) in &replacements {
            assert!(
                conf.contains(from.as_str()),
                "deploy/turnserver.conf no longer has {from:?}"
            );
            conf = conf.replace(from.as_str(), to);
        }
        let conf_path = dir.path().join("turnserver.conf");
        std::fs::write(&conf_path, conf).expect("write turnserver.conf");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&conf_path)
            .args(["--allow-loopback-peers", "-v"]);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        super::wait::eventually_async(
            &format!("coturn listening on {port}"),
            Duration::from_secs(15),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        Coturn {
            child,
            port,
            tls_port,
            log,
            _dir: dir,
        }
    }

    /// coturn's log so far (what it says about allocations and relayed traffic).
    pub fn log_text(&self) -> String {
        // --simple-log writes exactly the file given.
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `[turn]` config section pointing a kursrelay server at this coturn.
    pub fn turn_config(&self, urls: &[String], relay_only: bool) -> String {
        let list = urls
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!("[turn]\nurls = [{list}]\nsecret = \"{SECRET}\"\nrelay_only = {relay_only}\n")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real coturn (Debian's `turnserver`) on loopback for the TURN tests: shared-secret
//! authentication (`use-auth-secret`, as deploy/turnserver.conf), TURN over UDP and TCP on one
//! port and, with a certificate, TURN over TLS on a second. Loopback peers are allowed here
//! only because the media server under test is on 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let mut cmd = Command::new(bin);
        cmd.args(["-n", "--no-cli", "--no-dtls", "--fingerprint", "--use-auth-secret"])
            .arg(format!("--static-auth-secret={SECRET}"))
            .args(["--realm=kursrelay.test", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg("--allow-loopback-peers")
            .arg(format!("--listening-port={port}"))
            .args(["--min-port=40000", "--max-port=40999", "--simple-log", "-v"])
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("--db={}", dir.path().join("turndb").display()))
            .arg(format!("--pidfile={}", dir.path().join("turn.pid").display()));
        let tls_port = match tls {
            Some((cert, key)) => {
                let tls_port = free_port();
                cmd.arg(format!("--tls-listening-port={tls_port}"))
                    .arg(format!("--cert={}", cert.display()))
                    .arg(format!("--pkey={}", key.display()));
                Some(tls_port)
            }
            None => {
                cmd.arg("--no-tls");
                None
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "coturn did not start listening on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

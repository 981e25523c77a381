//! Names and IP addresses never reach a log line: a whole session (join, publish, subscribe,
//! leave) runs with every kursrelay log level on and the default level for the libraries, and
//! the captured output is searched.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_names_or_addresses_in_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(format!(
            "{},kursrelay=trace",
            kursrelay::config::Config::default_config()
                .unwrap()
                .log
                .filter
        ))
        .with_ansi(false)
        .with_writer(kursrelay::logging::Redacting(move || writer.clone()))
        .init();

    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "privacy", "Ingrid Kvalsund").await;
    leader.publish(PublishSpec::default()).await;
    let patient = TestPeer::join(&server, "privacy", "Bjørnar Haugen").await;
    let camera = patient.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || patient.received_count(&camera) > 10).await);
    patient.leave().await;
    patient.wait_msg(|m| m["type"] == "bye").await;
    leader.close().await;
    server.shutdown().await;

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("member joined") && log.contains("track published"),
        "logging is not on:\n{log}"
    );
    for secret in ["Ingrid", "Kvalsund", "Bjørnar", "Haugen", "127.0.0.1"] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "{secret:?} reached the log:\n{}",
            leaks.join("\n")
        );
    }
}

//! Smoke test of the fan-out load generator so it cannot rot: a few subscribers for a few
//! seconds against the real server. It checks delivery, never speed.

// The server's test harness, shared by path: this test lives here, beside the binary it runs,
// because cargo builds a package's binaries for its own tests only (`CARGO_BIN_EXE_…`).
#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_smoke_run_delivers_media() {
    // Keepalive pings every 200 ms, so the generator's clients meet them during the run (its
    // publisher once took the first ping for the end of the socket and left: 100 % loss at
    // the 500-subscriber sweep step, whose joins take longer than the default 15 s).
    let server =
        TestServer::spawn_with("[signalling]\nping_interval_ms = 200\nidle_timeout_ms = 1000\n")
            .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kursrelay-loadgen"))
        .args([
            "run",
            "--url",
            &server.ws_url(),
            "--subscribers",
            "4",
            "--samples",
            "1",
            // One of the three counting subscribers behind a 300 kbit/s line.
            "--capped",
            "0.34",
            "--cap-kbps",
            "300",
            "--seconds",
            "2",
            "--json",
        ])
        .env("KURSRELAY_ADMIN_KEY", ADMIN_KEY)
        .output()
        .await
        .expect("run kursrelay-loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["subscribers"], 4);
    // The capped one is measured apart, and its line loses much of a 2 Mbit/s feed.
    assert_eq!(report["capped"], 1, "{report}");
    assert!(
        report["capped_loss_pct"].as_f64().unwrap() > 10.0,
        "a 300 kbit/s cap lost nothing: {report}"
    );
    assert_eq!(report["subscribers_without_video"], 0, "{report}");
    assert!(
        report["packets_forwarded_per_s"].as_f64().unwrap() > 100.0,
        "{report}"
    );
    assert!(report["loss_pct"].as_f64().unwrap() < 5.0, "{report}");
    assert!(
        report["join_kf_p50_ms"].as_f64().is_some(),
        "no subscriber got a keyframe: {report}"
    );
    assert!(
        report["transit_p50_ms"].as_f64().is_some(),
        "the sample subscriber measured nothing: {report}"
    );
    assert!(server.metric(|m| &m.keyframe_requests_sent) >= 1);
    assert!(
        wait_until(TIMEOUT, || server.live().peer_connections == 0).await,
        "{:?}",
        server.live()
    );
    server.shutdown().await;
}

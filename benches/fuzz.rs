//! Long fuzz runs (RELIABILITY.md): `cargo bench --bench fuzz -- TARGET EXECUTIONS [SEED]`
//! with TARGET one of signalling, token, sdp, rest. Prints executions, time, rate and the peak
//! resident memory at start and end (growth would show a leak). A failure prints the input.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
#[path = "../tests/fuzz_targets/mod.rs"]
mod fuzz_targets;

use std::time::Instant;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let target = args.first().map(String::as_str).unwrap_or("signalling");
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let start = Instant::now();
    let rss0 = rss_kb();
    let mut rss_mid = 0;
    // Pure targets run in two halves (different seeds), so memory can be compared half-way and
    // at the end: a leak shows as growth in the second half.
    // media_route mutates the media seeds.
    let corpus_name = if target == "media_route" {
        "media"
    } else {
        target
    };
    let mut halves = |f: fn(&[u8])| {
        let first = fuzz_targets::run(corpus_name, n / 2, seed, f);
        rss_mid = rss_kb();
        first + fuzz_targets::run(corpus_name, n - n / 2, seed.wrapping_add(1_000_003), f)
    };
    let done = match target {
        "signalling" => halves(fuzz_targets::signalling),
        "token" => halves(fuzz_targets::token),
        "sdp" => halves(fuzz_targets::sdp),
        "media" => halves(fuzz_targets::media),
        "media_route" => halves(fuzz_targets::media_route),
        "media_session" => halves(fuzz_targets::media_session),
        "rest" => {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let mut server = common::TestServer::spawn().await;
                let mut router = kursrelay::http::router(server.state.clone());
                let seeds = fuzz_targets::corpus("rest");
                let mut rng = fuzz_targets::Rng::new(seed);
                let mut input = Vec::new();
                for i in 0..n {
                    // A fresh database now and then: the inputs create rows, and lists that
                    // grow without end would measure SQLite, not the API.
                    if i > 0 && i % 200_000 == 0 {
                        server.shutdown().await;
                        server = common::TestServer::spawn().await;
                        router = kursrelay::http::router(server.state.clone());
                    }
                    input.clear();
                    input.extend_from_slice(&seeds[rng.below(seeds.len())]);
                    let other = &seeds[rng.below(seeds.len())];
                    fuzz_targets::mutate(&mut rng, &mut input, other);
                    let text = common::rest_seed(&input);
                    fuzz_targets::rest(router.clone(), text.as_bytes(), common::ADMIN_KEY).await;
                    if i == n / 2 {
                        rss_mid = rss_kb();
                    }
                }
                server.shutdown().await;
                n
            })
        }
        other => panic!("unknown target {other}: signalling, token, sdp, rest"),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{target}: {done} executions in {secs:.1} s ({:.0}/s), 0 failures; RSS {rss0} kB at start{}, {} kB at the end",
        done as f64 / secs,
        if rss_mid > 0 { format!(", {rss_mid} kB half-way") } else { String::new() },
        rss_kb()
    );
}

//! kursrelay-loadgen: one synthetic 720p publisher and N subscribers through the real
//! signalling and ICE/DTLS, and the measurements of benches/loadgen/README.md.
//!
//! `run` measures one step against a running server; `sweep` starts the SFU itself (pinned with
//! taskset) for every step and repetition and prints the BENCHMARKS.md table; `storm` measures
//! join → first keyframe for single joins and for a burst of joins.

mod client;
mod net;
// The tests' token bucket (tests/common/netsim.rs uses it too); the generator uses part of it.
#[allow(dead_code)]
#[path = "../../tests/common/shaper.rs"]
mod shaper;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Fan-out load generator for kursrelay")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// A share of the counting subscribers behind a bandwidth cap (benches/loadgen/README.md).
#[derive(clap::Args, Clone, Copy, Debug)]
struct CapArgs {
    /// Share of the counting subscribers (0–1, spread evenly) that receive through a cap.
    #[arg(long, default_value_t = 0.0)]
    capped: f64,
    /// The cap, kbit/s, server → subscriber.
    #[arg(long, default_value_t = 800)]
    cap_kbps: u64,
    /// Depth of the cap's drop-tail queue, ms.
    #[arg(long, default_value_t = 200)]
    cap_queue_ms: u64,
}

impl CapArgs {
    const NONE: CapArgs = CapArgs {
        capped: 0.0,
        cap_kbps: 0,
        cap_queue_ms: 0,
    };

    /// The cap of the `k`-th counting subscriber, if it has one: `capped` of them, evenly spread.
    fn for_counting(&self, k: usize) -> Option<shaper::Rate> {
        let share = self.capped.clamp(0.0, 1.0);
        let capped = ((k + 1) as f64 * share).floor() > (k as f64 * share).floor();
        (capped && self.cap_kbps > 0).then(|| shaper::Rate {
            queue: shaper::Queue::Millis(self.cap_queue_ms),
            ..shaper::Rate::kbps(self.cap_kbps)
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure one step against a running server.
    Run {
        /// Signalling URL of the server.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(long, default_value_t = 25)]
        subscribers: usize,
        /// Length of the measuring window.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Subscribers that decrypt everything to measure transit time.
        #[arg(long, default_value_t = 4)]
        samples: usize,
        /// Joins per second while building up.
        #[arg(long, default_value_t = 50.0)]
        join_rate: f64,
        /// The server's process id, to read its CPU time and memory.
        #[arg(long)]
        sfu_pid: Option<u32>,
        /// The server's admin key, to create the course, session and invites.
        #[arg(long, env = "KURSRELAY_ADMIN_KEY")]
        admin_key: String,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cap: CapArgs,
    },
    /// Start the SFU per step and repetition, step N up until loss or CPU saturation.
    Sweep {
        /// The kursrelay binary (build with `cargo build --release`).
        #[arg(long, default_value = "target/release/kursrelay")]
        sfu_bin: String,
        /// CPU the SFU is pinned to (run the generator itself under `taskset -c` another one).
        #[arg(long, default_value_t = 0)]
        sfu_core: usize,
        #[arg(long, value_delimiter = ',', default_value = "25,50,100,200,400,800")]
        steps: Vec<usize>,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[arg(long, default_value_t = 4)]
        samples: usize,
        #[arg(long, default_value_t = 50.0)]
        join_rate: f64,
        /// Stop after the first step whose median loss exceeds this (percent; the subscribers
        /// without a cap).
        #[arg(long, default_value_t = 0.5)]
        max_loss: f64,
        #[command(flatten)]
        cap: CapArgs,
    },
    /// Join → first keyframe: single joins, then a storm of joins while streaming.
    Storm {
        #[arg(long, default_value = "target/release/kursrelay")]
        sfu_bin: String,
        #[arg(long, default_value_t = 0)]
        sfu_core: usize,
        #[arg(long, default_value_t = 20)]
        single: usize,
        #[arg(long, default_value_t = 200)]
        joins: usize,
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            url,
            subscribers,
            seconds,
            samples,
            join_rate,
            sfu_pid,
            admin_key,
            json,
            cap,
        } => {
            let step = Step {
                subscribers,
                seconds,
                samples,
                join_rate,
                cap,
            };
            let report = run_step(&url, &admin_key, sfu_pid, step).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", Report::header());
                println!("{}", report.row());
            }
        }
        Cmd::Sweep {
            sfu_bin,
            sfu_core,
            steps,
            seconds,
            repeats,
            samples,
            join_rate,
            max_loss,
            cap,
        } => {
            println!("{}", Report::header());
            for n in steps {
                let mut runs = Vec::new();
                for _ in 0..repeats {
                    let sfu = Sfu::start(&sfu_bin, sfu_core)?;
                    let step = Step {
                        subscribers: n,
                        seconds,
                        samples,
                        join_rate,
                        cap,
                    };
                    let r = run_step(&sfu.ws_url(), &sfu.admin_key, Some(sfu.pid()), step).await;
                    drop(sfu);
                    let r = r?;
                    eprintln!("{}", r.row());
                    runs.push(r);
                }
                let m = Report::median(&runs);
                println!("{}", m.row());
                if m.loss_pct > max_loss || m.sfu_cpu_pct > 95.0 {
                    eprintln!(
                        "stopping: loss {:.2} % / SFU CPU {:.0} % at N = {n}",
                        m.loss_pct, m.sfu_cpu_pct
                    );
                    break;
                }
            }
        }
        Cmd::Storm {
            sfu_bin,
            sfu_core,
            single,
            joins,
            rate,
        } => {
            let sfu = Sfu::start(&sfu_bin, sfu_core)?;
            storm(&sfu.ws_url(), &sfu.admin_key, single, joins, rate).await?;
        }
    }
    Ok(())
}

/// The SFU as a child process, pinned to one core, on an ephemeral port.
struct Sfu {
    child: Child,
    addr: String,
    admin_key: String,
    _dir: tempfile::TempDir,
}

impl Sfu {
    fn start(bin: &str, core: usize) -> anyhow::Result<Sfu> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("bench.toml");
        let admin_key = format!("loadgen-{}", uuid::Uuid::new_v4().simple());
        // KURSRELAY_LOADGEN_PACER=false: the server's viewer pacers off (`media.pacer`), for an
        // A/B in one build.
        let pacer = std::env::var("KURSRELAY_LOADGEN_PACER").map_or(true, |v| v != "false");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\npacer = {pacer}\n[log]\nfilter = \"warn\"\n\
                 [abuse]\nwebsockets_per_address = 100000\n\
                 [auth]\nadmin_key = \"{admin_key}\"\n[db]\npath = \"{}\"\n",
                dir.path().join("bench.db").display()
            ),
        )?;
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin} under taskset"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line)?;
        // Keep reading so the SFU's log writes never hit a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let addr = line
            .trim()
            .strip_prefix("kursrelay listening on http://")
            .context("the SFU did not print its address")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Sfu {
            child,
            addr,
            admin_key,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process ("self" for this one).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// System-wide UDP receive-buffer drops (/proc/net/snmp, as `nstat` shows them).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    if udp.len() < 2 {
        return 0;
    }
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    names
        .iter()
        .position(|n| *n == "RcvbufErrors")
        .and_then(|i| values.get(i)?.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 request on loopback to the server behind `ws_url`; returns (status line, body).
async fn http(
    ws_url: &str,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &str,
) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(&host).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").context("bad HTTP response")?;
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// One admin REST call; returns the JSON body.
async fn api(
    ws_url: &str,
    key: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let headers = format!("Authorization: Bearer {key}\r\nContent-Type: application/json\r\n");
    let (status, json) = http(ws_url, "POST", path, &headers, &body.to_string()).await?;
    anyhow::ensure!(status.starts_with("HTTP/1.1 2"), "{path}: {status} {json}");
    Ok(serde_json::from_str(&json)?)
}

/// A course and a session for this run, with a leader token and `n` participant tokens.
async fn setup(ws_url: &str, key: &str, n: usize) -> anyhow::Result<(String, Vec<String>)> {
    let course = api(
        ws_url,
        key,
        "/api/courses",
        serde_json::json!({"title": "Loadgen"}),
    )
    .await?;
    let session = api(
        ws_url,
        key,
        &format!("/api/courses/{}/sessions", course["id"].as_str().unwrap_or_default()),
        serde_json::json!({"title": "Fan-out", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z", "host_site": "Loopback"}),
    )
    .await?;
    let path = format!(
        "/api/sessions/{}/invites",
        session["id"].as_str().unwrap_or_default()
    );
    let token = |v: serde_json::Value| {
        v["link"]
            .as_str()
            .and_then(|l| l.split("#t=").nth(1))
            .map(str::to_owned)
            .context("no link")
    };
    let leader = token(
        api(
            ws_url,
            key,
            &path,
            serde_json::json!({"role": "leader", "display_name": "Loadgen"}),
        )
        .await?,
    )?;
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        subs.push(token(
            api(
                ws_url,
                key,
                &path,
                serde_json::json!({"role": "participant", "display_name": format!("Deltakar {i}")}),
            )
            .await?,
        )?);
    }
    Ok((leader, subs))
}

/// A counter from the server's /metrics.
async fn metric(ws_url: &str, name: &str) -> anyhow::Result<u64> {
    let (_, body) = http(ws_url, "GET", "/metrics", "", "").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("{name} missing from /metrics"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[derive(Debug, Clone, Serialize, Default)]
struct Report {
    subscribers: usize,
    window_s: f64,
    packets_forwarded_per_s: f64,
    sfu_cpu_pct: f64,
    us_per_packet: f64,
    us_per_packet_min: f64,
    us_per_packet_max: f64,
    loss_pct: f64,
    worst_subscriber_loss_pct: f64,
    out_of_order: u64,
    subscribers_without_video: usize,
    plis_per_s: f64,
    transit_p50_ms: f64,
    transit_p99_ms: f64,
    transit_p999_ms: f64,
    join_kf_p50_ms: f64,
    join_kf_p95_ms: f64,
    rss_kb_per_subscriber: f64,
    generator_cpu_pct: f64,
    rcvbuf_errors: u64,
    sfu_drops: u64,
    valid: bool,
    /// Counting subscribers behind a cap of `cap_kbps`, and their loss (not in `loss_pct`).
    capped: usize,
    cap_kbps: u64,
    capped_loss_pct: f64,
}

impl Report {
    fn header() -> String {
        "| N | fwd pkt/s | SFU CPU % | µs/pkt (min–max) | loss % (worst sub) | ooo | PLI/s | transit p50/p99/p99.9 ms | join→kf p50/p95 ms | RSS KB/sub | gen CPU % | rcvbuf err | SFU drops | valid | capped (their loss %) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into()
    }

    fn row(&self) -> String {
        format!(
            "| {} | {:.0} | {:.0} | {:.1} ({:.1}–{:.1}) | {:.3} ({:.2}) | {} | {:.2} | {:.2} / {:.2} / {:.2} | {:.0} / {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            self.subscribers,
            self.packets_forwarded_per_s,
            self.sfu_cpu_pct,
            self.us_per_packet,
            self.us_per_packet_min,
            self.us_per_packet_max,
            self.loss_pct,
            self.worst_subscriber_loss_pct,
            self.out_of_order,
            self.plis_per_s,
            self.transit_p50_ms,
            self.transit_p99_ms,
            self.transit_p999_ms,
            self.join_kf_p50_ms,
            self.join_kf_p95_ms,
            self.rss_kb_per_subscriber,
            self.generator_cpu_pct,
            self.rcvbuf_errors,
            self.sfu_drops,
            if self.valid { "yes" } else { "NO" },
            if self.capped == 0 {
                "–".to_owned()
            } else {
                format!(
                    "{} at {} kbit/s ({:.1} %)",
                    self.capped, self.cap_kbps, self.capped_loss_pct
                )
            },
        )
    }

    /// Median of each field over repetitions; the µs/packet spread is min–max of the runs.
    fn median(runs: &[Report]) -> Report {
        let med = |f: fn(&Report) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            percentile(&v, 0.5)
        };
        let upk: Vec<f64> = runs.iter().map(|r| r.us_per_packet).collect();
        Report {
            subscribers: runs[0].subscribers,
            window_s: med(|r| r.window_s),
            packets_forwarded_per_s: med(|r| r.packets_forwarded_per_s),
            sfu_cpu_pct: med(|r| r.sfu_cpu_pct),
            us_per_packet: med(|r| r.us_per_packet),
            us_per_packet_min: upk.iter().cloned().fold(f64::INFINITY, f64::min),
            us_per_packet_max: upk.iter().cloned().fold(0.0, f64::max),
            loss_pct: med(|r| r.loss_pct),
            worst_subscriber_loss_pct: med(|r| r.worst_subscriber_loss_pct),
            out_of_order: med(|r| r.out_of_order as f64) as u64,
            subscribers_without_video: med(|r| r.subscribers_without_video as f64) as usize,
            plis_per_s: med(|r| r.plis_per_s),
            transit_p50_ms: med(|r| r.transit_p50_ms),
            transit_p99_ms: med(|r| r.transit_p99_ms),
            transit_p999_ms: med(|r| r.transit_p999_ms),
            join_kf_p50_ms: med(|r| r.join_kf_p50_ms),
            join_kf_p95_ms: med(|r| r.join_kf_p95_ms),
            rss_kb_per_subscriber: med(|r| r.rss_kb_per_subscriber),
            generator_cpu_pct: med(|r| r.generator_cpu_pct),
            rcvbuf_errors: runs.iter().map(|r| r.rcvbuf_errors).max().unwrap_or(0),
            sfu_drops: med(|r| r.sfu_drops as f64) as u64,
            valid: runs.iter().all(|r| r.valid),
            capped: runs[0].capped,
            cap_kbps: runs[0].cap_kbps,
            capped_loss_pct: med(|r| r.capped_loss_pct),
        }
    }
}

/// Joins `n` subscribers at `rate` per second; the first `samples` decrypt; `cap` puts a share
/// of the others behind a bandwidth cap.
async fn join_many(
    url: &str,
    tokens: &[String],
    samples: usize,
    rate: f64,
    cap: CapArgs,
    epoch: Instant,
) -> anyhow::Result<Vec<client::Subscriber>> {
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut subs = Vec::with_capacity(tokens.len());
    let start = tokio::time::Instant::now();
    for (i, token) in tokens.iter().enumerate() {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let sample = i < samples;
        let rate = (!sample).then(|| cap.for_counting(i - samples)).flatten();
        subs.push(client::subscribe(url, token, sample, rate, epoch).await?);
    }
    Ok(subs)
}

struct Snapshot {
    at: Instant,
    sfu_cpu: f64,
    gen_cpu: f64,
    forwarded: u64,
    dropped: u64,
    rcvbuf: u64,
    plis: u64,
    /// Per subscriber: (received, expected) summed over its streams.
    subs: Vec<(u64, u64)>,
    ooo: u64,
    transit_len: Vec<usize>,
}

async fn snapshot(
    url: &str,
    pid: Option<u32>,
    publisher: &client::Publisher,
    subs: &[client::Subscriber],
) -> anyhow::Result<Snapshot> {
    let mut per = Vec::with_capacity(subs.len());
    let mut ooo = 0;
    for s in subs {
        let c = s.counters.lock().expect("counters");
        per.push(
            c.streams
                .iter()
                .fold((0, 0), |(r, e), st| (r + st.received, e + st.expected())),
        );
        ooo += c.streams.iter().map(|st| st.out_of_order).sum::<u64>();
    }
    Ok(Snapshot {
        at: Instant::now(),
        sfu_cpu: pid
            .and_then(|p| cpu_seconds(&p.to_string()))
            .unwrap_or(f64::NAN),
        gen_cpu: cpu_seconds("self").unwrap_or(f64::NAN),
        forwarded: metric(url, "kursrelay_packets_forwarded_total").await?,
        dropped: metric(url, "kursrelay_packets_dropped_total").await?,
        rcvbuf: udp_rcvbuf_errors(),
        plis: publisher
            .stats
            .plis
            .load(std::sync::atomic::Ordering::Relaxed),
        subs: per,
        ooo,
        transit_len: subs
            .iter()
            .map(|s| {
                s.transit
                    .as_ref()
                    .map_or(0, |t| t.lock().expect("transit").len())
            })
            .collect(),
    })
}

/// What one step does: `subscribers` joined at `join_rate`, the first `samples` decrypting,
/// measured for `seconds`; `cap` puts a share of the others on a weak line.
#[derive(Clone, Copy)]
struct Step {
    subscribers: usize,
    seconds: u64,
    samples: usize,
    join_rate: f64,
    cap: CapArgs,
}

async fn run_step(url: &str, key: &str, pid: Option<u32>, step: Step) -> anyhow::Result<Report> {
    let Step {
        subscribers: n,
        seconds,
        samples,
        join_rate,
        cap,
    } = step;
    let epoch = Instant::now();
    let (leader, tokens) = setup(url, key, n).await?;
    let publisher = client::publish(url, &leader, epoch).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base = pid.and_then(rss_kb);
    let subs = join_many(url, &tokens, samples.min(n), join_rate, cap, epoch).await?;
    // Everyone should have video within a few seconds; then let queues settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && subs
            .iter()
            .skip(samples)
            .any(|s| s.join_to_keyframe().is_none())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let a = snapshot(url, pid, &publisher, &subs).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let b = snapshot(url, pid, &publisher, &subs).await?;
    let rss_end = pid.and_then(rss_kb);

    let window = (b.at - a.at).as_secs_f64();
    let forwarded = (b.forwarded - a.forwarded) as f64;
    let sfu_cpu = b.sfu_cpu - a.sfu_cpu;
    let gen_cpu = b.gen_cpu - a.gen_cpu;
    let (mut recv, mut exp, mut worst) = (0u64, 0u64, 0.0f64);
    let (mut capped, mut capped_recv, mut capped_exp) = (0, 0u64, 0u64);
    let mut without_video = 0;
    for (i, s) in subs.iter().enumerate().skip(samples.min(n)) {
        let (r, e) = (
            b.subs[i].0 - a.subs[i].0,
            b.subs[i].1.saturating_sub(a.subs[i].1),
        );
        if s.capped {
            // Measured apart: their loss is the cap's doing, not the SFU's.
            capped += 1;
            capped_recv += r;
            capped_exp += e;
            continue;
        }
        if s.join_to_keyframe().is_none() || e == 0 {
            without_video += 1;
            continue;
        }
        recv += r;
        exp += e;
        worst = worst.max(100.0 * (1.0 - r as f64 / e as f64).max(0.0));
    }
    let mut transit: Vec<f64> = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        if let Some(t) = &s.transit {
            let t = t.lock().expect("transit");
            transit.extend(
                t[a.transit_len[i]..b.transit_len[i].min(t.len())]
                    .iter()
                    .map(|&us| us as f64 / 1000.0),
            );
        }
    }
    transit.sort_by(|x, y| x.total_cmp(y));
    let mut joins: Vec<f64> = subs
        .iter()
        .filter_map(|s| s.join_to_keyframe())
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    joins.sort_by(|x, y| x.total_cmp(y));

    let gen_pct = 100.0 * gen_cpu / window;
    let rcvbuf = b.rcvbuf - a.rcvbuf;
    let report = Report {
        subscribers: n,
        window_s: window,
        packets_forwarded_per_s: forwarded / window,
        sfu_cpu_pct: 100.0 * sfu_cpu / window,
        us_per_packet: 1e6 * sfu_cpu / forwarded.max(1.0),
        us_per_packet_min: 1e6 * sfu_cpu / forwarded.max(1.0),
        us_per_packet_max: 1e6 * sfu_cpu / forwarded.max(1.0),
        loss_pct: if exp > 0 {
            100.0 * (1.0 - recv as f64 / exp as f64).max(0.0)
        } else {
            100.0
        },
        worst_subscriber_loss_pct: worst,
        out_of_order: b.ooo - a.ooo,
        subscribers_without_video: without_video,
        plis_per_s: (b.plis - a.plis) as f64 / window,
        transit_p50_ms: percentile(&transit, 0.5),
        transit_p99_ms: percentile(&transit, 0.99),
        transit_p999_ms: percentile(&transit, 0.999),
        join_kf_p50_ms: percentile(&joins, 0.5),
        join_kf_p95_ms: percentile(&joins, 0.95),
        rss_kb_per_subscriber: match (rss_base, rss_end) {
            (Some(a), Some(b)) => (b as f64 - a as f64) / n as f64,
            _ => f64::NAN,
        },
        generator_cpu_pct: gen_pct,
        rcvbuf_errors: rcvbuf,
        sfu_drops: b.dropped - a.dropped,
        // The generator must not be the bottleneck, and the kernel must not have dropped.
        valid: gen_pct < 90.0 && rcvbuf == 0,
        capped,
        cap_kbps: cap.cap_kbps,
        capped_loss_pct: if capped_exp > 0 {
            100.0 * (1.0 - capped_recv as f64 / capped_exp as f64).max(0.0)
        } else {
            f64::NAN
        },
    };
    for s in &subs {
        s.stop.cancel();
    }
    publisher.stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(report)
}

async fn storm(url: &str, key: &str, single: usize, joins: usize, rate: f64) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let (leader, tokens) = setup(url, key, single + joins).await?;
    let publisher = client::publish(url, &leader, epoch).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let summarise = |label: &str, subs: &[client::Subscriber]| {
        let mut v: Vec<f64> = subs
            .iter()
            .filter_map(|s| s.join_to_keyframe())
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {label} | {} | {} | {:.0} | {:.0} | {:.0} |",
            subs.len(),
            subs.len() - v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.95),
            v.last().copied().unwrap_or(f64::NAN)
        );
    };
    println!("| joins | N | without video | join→kf p50 ms | p95 ms | max ms |\n|---|---|---|---|---|---|");
    let mut singles = Vec::new();
    for i in 0..single {
        singles.push(client::subscribe(url, &tokens[i], false, None, epoch).await?);
        let deadline = Instant::now() + Duration::from_secs(5);
        while singles[i].join_to_keyframe().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    summarise("single, one at a time", &singles);
    let burst = join_many(url, &tokens[single..], 0, rate, CapArgs::NONE, epoch).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    summarise(&format!("storm at {rate}/s while streaming"), &burst);
    for s in singles.iter().chain(burst.iter()) {
        s.stop.cancel();
    }
    publisher.stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

//! Fuzz targets and a small mutation engine, shared by the smoke run in `cargo test`
//! (tests/fuzz.rs, a few thousand inputs per target) and the long runs
//! (`cargo bench --bench fuzz -- TARGET EXECUTIONS`, RELIABILITY.md).
//!
//! Why a mutation driver of our own and not libFuzzer/cargo-fuzz: those need a nightly
//! compiler, which this machine cannot install; cargo-afl works on stable but builds AFL++ and
//! instruments the whole dependency tree, too heavy for a test that runs in every CI. This
//! driver has no coverage feedback: it mutates a committed seed corpus of real inputs (bit
//! flips, interesting bytes, insertions, deletions, splices between seeds, JSON-aware token
//! swaps), which finds parser panics and broken invariants but not deep paths — cargo-afl is
//! the next step for that.
//!
//! Every target states an oracle besides "no panic".
#![allow(dead_code)] // the smoke test and the long-run binary use different parts

use std::path::Path;

/// xorshift64*: small, fast, reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\r\n",
    b"-1",
    b"0",
    b"4294967296",
    b"18446744073709551616",
    b"1e309",
    b"null",
    b"true",
    b"\"\"",
    b"\xf0\x9f\x98\x80",
    b"\xc3\x28",
    b"=",
    b".",
    b"%",
    b"&",
    b"a=",
    b"m=video 9 UDP/TLS/RTP/SAVPF 96",
];

/// Mutates `input` in place, 1–4 steps, sometimes splicing in part of `other`.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, piece.iter().copied());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a chunk (repeated fields, long strings).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk: Vec<u8> = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, chunk);
            }
            5 if !other.is_empty() => {
                // Splice: our head, the other's tail.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                input.truncate(rng.below(len));
            }
            _ => {
                // Swap two JSON-ish tokens: a number for a string and the like.
                if let Some(i) = input.iter().position(|&b| b == b':') {
                    let piece = INTERESTING[rng.below(INTERESTING.len())];
                    let end = input[i + 1..]
                        .iter()
                        .position(|&b| b == b',' || b == b'}')
                        .map_or(input.len(), |p| i + 1 + p);
                    input.splice(i + 1..end, piece.iter().copied());
                }
            }
        }
    }
}

/// The committed seeds of one target (tests/fuzz_corpus/TARGET/*), sorted by name.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus at {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus file"))
        .collect();
    assert!(!seeds.is_empty(), "empty corpus for {target}");
    seeds
}

/// Runs `target` on `executions` mutated inputs (and first on every seed as it is). The
/// target panics on a broken oracle; the input is printed first so it can become a
/// regression test.
pub fn run(name: &str, executions: u64, seed: u64, mut target: impl FnMut(&[u8])) -> u64 {
    let seeds = corpus(name);
    for s in &seeds {
        target(s);
    }
    let mut rng = Rng::new(seed);
    let mut input = Vec::with_capacity(4096);
    for _ in 0..executions {
        let base = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        input.clear();
        input.extend_from_slice(base);
        mutate(&mut rng, &mut input, other);
        input.truncate(256 * 1024);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if let Err(e) = result {
            // Kept byte for byte (binary targets do not survive a lossy print), ready to be
            // copied into the corpus as a regression seed.
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let file = dir.join(format!("{name}-{seed}-{}.bin", input.len()));
            let saved = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, &input))
                .map_or_else(
                    |e| format!("not saved: {e}"),
                    |()| file.display().to_string(),
                );
            eprintln!(
                "{name}: failing input ({} bytes, {saved}): {:?}",
                input.len(),
                String::from_utf8_lossy(&input)
            );
            std::panic::resume_unwind(e);
        }
    }
    executions + seeds.len() as u64
}

// ---- targets ------------------------------------------------------------------------------

/// Signalling: every line of the input is a frame for `parse_client_message`. Oracle: a frame
/// that parses has a documented type, and its error, if any, has a stable code and a message.
pub fn signalling(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    for frame in text.split('\n') {
        match kursrelay::protocol::parse_client_message(frame) {
            Ok(msg) => {
                assert!(kursrelay::protocol::ClientMessage::TYPES.contains(&msg.type_name()))
            }
            Err((err, request)) => {
                assert!(!err.message.is_empty());
                if let Some(r) = request {
                    assert!(kursrelay::protocol::ClientMessage::TYPES.contains(&r.as_str()));
                }
            }
        }
    }
}

/// The key the token seeds are signed with (tests only).
pub const TOKEN_TEST_KEY: &[u8] = b"kursrelay fuzz corpus key, not a secret";

/// Join tokens and rejoin credentials: each seed is a claims JSON; the target signs it with
/// the test key and then checks the mutated *token*. Oracle: `verify` never panics, and it
/// accepts a token only if it is exactly a token the key signed (no malleability: every
/// accepted token re-signs to itself).
pub fn token(input: &[u8]) {
    let key = kursrelay::auth::TokenKey::new(TOKEN_TEST_KEY);
    let text = String::from_utf8_lossy(input);
    // Seeds are claims; mutants are tried both as claims to sign and as tokens to verify.
    if let Some(claims) = serde_json::from_str::<kursrelay::auth::Claims>(&text)
        .ok()
        .filter(|c| c.exp > 0)
    {
        let signed = key.sign(&claims);
        let back = key
            .verify(&signed, 0)
            .expect("a freshly signed token verifies");
        assert_eq!(back.sub, claims.sub);
    }
    if let Ok(claims) = key.verify(&text, 0) {
        assert_eq!(key.sign(&claims), text, "accepted a token it did not sign");
    }
}

/// SDP offers and answers as the server parses them first. Oracle: no panic; a parsed
/// description keeps its text.
pub fn sdp(input: &[u8]) {
    let text = String::from_utf8_lossy(input).into_owned();
    if let Ok(d) = webrtc::peer_connection::RTCSessionDescription::offer(text.clone()) {
        assert_eq!(d.sdp, text);
    }
    let _ = webrtc::peer_connection::RTCSessionDescription::answer(text);
}

/// Admin REST: the input is `METHOD PATH?QUERY`, header lines, a blank line, the body. It goes
/// through the real router (`http::router`) with a real database. Oracles: never a 500; every
/// error is JSON `{"error", "message"}`; without the admin key nothing succeeds and the body
/// is never judged (401, 404 or 405 only — authentication comes before parsing).
pub async fn rest(router: axum::Router, input: &[u8], admin_key: &str) {
    use tower::ServiceExt;
    let text = String::from_utf8_lossy(input);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or(("GET", first));
    let Ok(method) = axum::http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    if !target.starts_with("/api/") {
        return; // only the admin API is this target's business
    }
    let mut req = axum::http::Request::builder().method(method).uri(target);
    let mut authorised = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.trim().eq_ignore_ascii_case("authorization") && v == format!("Bearer {admin_key}")
            {
                authorised = true;
            }
            req = req.header(k.trim(), v);
        }
    }
    let Ok(req) = req.body(axum::body::Body::from(body.to_owned())) else {
        return; // not even a valid HTTP request (bad header name or value)
    };
    let resp = router.oneshot(req).await.expect("the router never fails");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("a body");
    assert_ne!(status, 500, "internal error for {text:?}");
    if status >= 400 {
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{status} without a JSON body for {text:?}"));
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{status}: {v} for {text:?}"
        );
    }
    if !authorised && !target.contains("/attendance") {
        assert!(
            matches!(status, 401 | 404 | 405),
            "{status} without the admin key for {text:?}"
        );
    }
}

thread_local! {
    static MEDIA_PORT: std::cell::RefCell<Option<kursrelay::sfu::testing::MediaPortHarness>> =
        const { std::cell::RefCell::new(None) };
    static MEDIA_SESSION: std::cell::RefCell<Option<kursrelay::sfu::testing::MediaSessionHarness>> =
        const { std::cell::RefCell::new(None) };
}

/// An established publish session (ICE and DTLS done in memory with a webrtc-rs client): the
/// input's first byte says what the rest is — bit 0 clear: plaintext RTP, set: plaintext
/// RTCP, each encrypted with the client's own SRTP keys, so it passes authentication; bit 1
/// set: sent as it is. Seeds (tests/fuzz_corpus/media_session): VP8 and Opus RTP with the
/// client's SSRCs, header extensions, padding, CSRCs, an unknown SSRC; SR+SDES, RR, NACK, PLI,
/// BYE, REMB, transport-cc. This is what a participant with a valid link can send. Oracle:
/// nothing panics or hangs, and the connection stays up (no input the client may send tears
/// down the server's side of it, except by its own DTLS close, which is not reachable here).
pub fn media_session(input: &[u8]) {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    MEDIA_SESSION.with(|cell| {
        let mut cell = cell.borrow_mut();
        let h = cell.get_or_insert_with(|| {
            kursrelay::sfu::testing::MediaSessionHarness::new().expect("an in-memory session")
        });
        if selector & 2 != 0 {
            h.feed_raw(body);
        } else if selector & 1 == 0 {
            h.feed_rtp(body);
        } else {
            h.feed_rtcp(body);
        }
    });
}

/// How many datagrams the session's SSRC gate has kept from rtc.
pub fn media_session_ssrcs_refused() -> u64 {
    MEDIA_SESSION.with(|cell| cell.borrow().as_ref().map_or(0, |h| h.ssrcs_refused()))
}

/// Whether the session behind `media_session` is still connected, and how many RTP packets
/// it has read (the seeds must reach it, or the target proves nothing).
pub fn media_session_state() -> (bool, u64) {
    MEDIA_SESSION.with(|cell| {
        cell.borrow()
            .as_ref()
            .map_or((false, 0), |h| (h.is_connected(), h.packets_received()))
    })
}

/// The sources a fuzzed datagram may come from (chosen by the input's first byte). Source 3
/// is treated as a client that passed its ICE check (bound), so DTLS, SRTP and SRTCP from it
/// reach the connection; the others are strangers.
fn media_source(selector: u8) -> (std::net::SocketAddr, bool) {
    let port = 40000 + u16::from(selector % 4);
    (
        std::net::SocketAddr::from(([127, 0, 0, 9], port)),
        selector & 4 != 0,
    )
}

fn media_port() -> kursrelay::sfu::testing::MediaPortHarness {
    let offer = String::from_utf8(corpus("sdp")[0].clone()).expect("utf-8 seed");
    let mut port = kursrelay::sfu::testing::MediaPortHarness::new(&offer).expect("harness");
    port.bind_checked(media_source(3).0);
    port
}

/// Media port: the input's first byte picks the source address and UDP or ICE-TCP, the rest is
/// one datagram (seeds: STUN, DTLS, SRTP, SRTCP; "UUUU…" stands for the real ufrag). It goes
/// through the classifier, the demultiplexer and, if routed, a real ICE-lite rtc connection
/// that answered a Chromium offer (source 3 counts as a client that passed ICE, so its DTLS and
/// SRTP reach the connection). Oracle: no stranger's address ever becomes bound (binding needs
/// a check that passed MESSAGE-INTEGRITY, which mutation cannot forge), and nothing panics.
pub fn media(input: &[u8]) {
    let Some((&selector, datagram)) = input.split_first() else {
        return;
    };
    MEDIA_PORT.with(|cell| {
        let mut cell = cell.borrow_mut();
        let port = cell.get_or_insert_with(media_port);
        let ufrag = port.ufrag().as_bytes().to_vec();
        let mut d = datagram.to_vec();
        if let Some(at) = d.windows(16).position(|w| w == b"UUUUUUUUUUUUUUUU") {
            d[at..at + 16].copy_from_slice(&ufrag[..16]);
        }
        let (from, tcp) = media_source(selector);
        port.feed(from, &d, tcp);
        for s in [0, 1, 2] {
            let (addr, _) = media_source(s);
            assert!(!port.is_bound(&addr), "a fuzzed datagram bound {addr}");
        }
    });
}

/// The classifier and demultiplexer alone, for volume (the ≥ 1 M datagram smoke).
pub fn media_route(input: &[u8]) {
    let Some((&selector, datagram)) = input.split_first() else {
        return;
    };
    MEDIA_PORT.with(|cell| {
        let mut cell = cell.borrow_mut();
        let port = cell.get_or_insert_with(media_port);
        let (from, _) = media_source(selector);
        port.route_only(from, datagram);
    });
}

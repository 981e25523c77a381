//! A short run of every fuzz target (tests/fuzz_targets): the committed seeds as they are, then
//! a few thousand mutations each, with a fixed seed so a failure repeats. The long runs and
//! their figures: RELIABILITY.md (`cargo bench --bench fuzz -- TARGET EXECUTIONS`).

mod common;
mod fuzz_targets;

use common::*;

#[test]
fn signalling_frames() {
    fuzz_targets::run("signalling", 30_000, 1, fuzz_targets::signalling);
}

#[test]
fn join_tokens_and_rejoin_credentials() {
    fuzz_targets::run("token", 30_000, 2, fuzz_targets::token);
}

#[test]
fn sdp_offers_and_answers() {
    fuzz_targets::run("sdp", 5_000, 3, fuzz_targets::sdp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rest_bodies_and_queries() {
    let server = TestServer::spawn().await;
    let router = kursrelay::http::router(server.state.clone());
    let seeds = fuzz_targets::corpus("rest");
    let mut rng = fuzz_targets::Rng::new(4);
    let mut input = Vec::new();
    let mut runs = 0;
    for i in 0..3_000 {
        input.clear();
        input.extend_from_slice(&seeds[i % seeds.len()]);
        if i >= seeds.len() {
            let other = &seeds[rng.below(seeds.len())];
            fuzz_targets::mutate(&mut rng, &mut input, other);
        }
        let text = rest_seed(&input);
        fuzz_targets::rest(router.clone(), text.as_bytes(), ADMIN_KEY).await;
        runs += 1;
    }
    assert_eq!(runs, 3_000);
    server.shutdown().await;
}

#[test]
fn media_port_datagrams_through_the_connection() {
    fuzz_targets::run("media", 20_000, 5, fuzz_targets::media);
}

/// RTP and RTCP inside an established session, encrypted with the client's keys: the seeds
/// must reach the connection (and be read as RTP), and it must stay up through the mutations.
#[test]
fn rtp_and_rtcp_inside_an_established_session() {
    fuzz_targets::run("media_session", 0, 7, fuzz_targets::media_session);
    let (up, read) = fuzz_targets::media_session_state();
    assert!(up, "the session is not connected after the seeds");
    assert!(
        read >= 5,
        "only {read} seed RTP packets were read by the connection"
    );
    fuzz_targets::run("media_session", 5_000, 7, fuzz_targets::media_session);
    let (up, _) = fuzz_targets::media_session_state();
    assert!(up, "the session went down under fuzzed RTP/RTCP");
}

/// ≥ 1 M mutated datagrams through the classifier and demultiplexer (issue 9, item 8).
#[test]
fn a_million_datagrams_through_the_classifier_and_demux() {
    let runs = fuzz_targets::run("media", 1_000_000, 6, fuzz_targets::media_route);
    assert!(runs >= 1_000_000);
}

/// Regression (found by `media_session`): datagrams with ever new SSRCs from a client's
/// address — here unauthenticated ones — each created SRTP state in rtc before the tag was
/// checked: ≈ 200 bytes per SSRC, without bound (300 000 grew the server by 58 MB). Only the
/// declared SSRCs and a few more per connection reach rtc now.
#[test]
fn new_ssrcs_from_a_client_do_not_grow_the_server() {
    let mut input = vec![2u8, 0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
    input.extend_from_slice(&[0xab; 60]);
    fuzz_targets::media_session(&input);
    let before = fuzz_targets::media_session_ssrcs_refused();
    for i in 0..20_000u32 {
        input[9..13].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
        input[3..5].copy_from_slice(&(i as u16).to_be_bytes());
        fuzz_targets::media_session(&input);
    }
    let refused = fuzz_targets::media_session_ssrcs_refused() - before;
    assert!(
        refused >= 20_000 - 8,
        "only {refused} of 20 000 datagrams with new SSRCs were kept from rtc"
    );
    let (up, _) = fuzz_targets::media_session_state();
    assert!(up);
}

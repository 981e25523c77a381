//! The web client's own way through the floor, twice, in headless Chromium: a participant
//! raises a hand, the leader gives the floor, her camera and microphone reach the others; the
//! leader takes it back and gives it again, and her media reaches them again — on the same
//! m-lines (the client reuses its transceivers), not on a pile of new ones.

mod common;

use std::time::Duration;

use common::chromium::Chromium;
use common::*;
use kursrelay::protocol::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_grant_revoke_grant_twice_in_the_browser() {
    let server = TestServer::spawn().await;
    let mut b = Chromium::launch().await;
    let base = format!("http://{}", server.addr);
    let leader = server
        .token("floor-ui", Role::Leader, Some("Kursleiar"), false)
        .await;
    let kari = server
        .token("floor-ui", Role::Participant, Some("Kari"), false)
        .await;
    let lead = b.open(&format!("{base}/publish.html#t={leader}")).await;
    b.eval(&lead, "kursrelay.start({}).then(() => true)").await;
    let part = b.open(&format!("{base}/watch.html#t={kari}")).await;
    b.eval(&part, "kursrelay.start({}).then(() => true)").await;
    // Another member who receives everything, counting packets per track.
    let per = TestPeer::join(&server, "floor-ui", "Per").await;
    let kari_id = b
        .wait_for(
            &lead,
            "((kursrelay.roster() || {}).members || []).find((m) => m.name === 'Kari')?.member_id",
            10,
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();

    let mut seen: Vec<String> = Vec::new();
    for round in 0..3 {
        b.eval(&part, "kursrelay.raiseHand().then(() => true)")
            .await;
        b.wait_for(
            &lead,
            &format!("((kursrelay.roster() || {{}}).hands || []).includes('{kari_id}')"),
            10,
        )
        .await;
        b.eval(
            &lead,
            &format!("kursrelay.grantFloor('{kari_id}').then(() => true)"),
        )
        .await;
        // Each round brings two `floor` messages (given, taken back): wait for this one's first.
        b.wait_for(
            &part,
            &format!(
                "kursrelay.messages().filter((m) => m === 'floor').length === {}",
                2 * round + 1
            ),
            10,
        )
        .await;
        b.eval(&part, "kursrelay.publishFloor().then(() => true)")
            .await;

        // Her camera and microphone reach Per again, as new tracks with media on them.
        let mut found = (None, None);
        let ok = wait_until(Duration::from_secs(15), || {
            let offered = per.offered();
            let pick = |kind: kursrelay::protocol::MediaKind| {
                offered
                    .iter()
                    .find(|t| t.member_id.to_string() == kari_id && t.kind == kind)
                    .map(|t| t.track_id.to_string())
                    .filter(|id| !seen.contains(id))
            };
            found = (
                pick(kursrelay::protocol::MediaKind::Video),
                pick(kursrelay::protocol::MediaKind::Audio),
            );
            match &found {
                (Some(v), Some(a)) => per.received_count(v) > 20 && per.received_count(a) > 20,
                _ => false,
            }
        })
        .await;
        assert!(
            ok,
            "round {round}: Kari's media did not reach Per: {:?} {:?}",
            per.offered(),
            found
        );
        let (video, audio) = (found.0.unwrap(), found.1.unwrap());
        // The leader's tab decodes her video.
        let before = b.eval(&lead, "kursrelay.stats()").await["framesDecoded"]
            .as_u64()
            .unwrap_or(0);
        b.wait_for(
            &lead,
            &format!("kursrelay.stats().then((s) => s.framesDecoded > {before} + 10)"),
            15,
        )
        .await;
        // The same two m-lines every time.
        let mlines = b
            .eval(
                &part,
                "kursrelay.client._conn.publish.pc.getTransceivers().length",
            )
            .await;
        assert_eq!(mlines, 2, "round {round}: m-lines piled up");
        if round == 0 {
            b.screenshot(&part, "floor-participant-live").await;
        }
        b.eval(
            &lead,
            &format!("kursrelay.revokeFloor('{kari_id}').then(() => true)"),
        )
        .await;
        assert!(
            wait_until(TIMEOUT, || !per
                .offered()
                .iter()
                .any(|t| t.track_id.to_string() == video))
            .await,
            "round {round}: still offered after the floor was taken back"
        );
        b.wait_for(
            &part,
            "kursrelay.client._conn.publish.pc.getSenders().every((s) => !s.track)",
            10,
        )
        .await;
        seen.push(video);
        seen.push(audio);
    }
    drop(b);
    per.close().await;
    server.shutdown().await;
}

//! The course client in a real browser: headless Chromium with fake cameras and microphones,
//! through the real server. A leader teaches with camera and screen; two participants and a
//! site watch; a participant is given the floor and then loses it; someone on an open link is
//! let in by a click; an interpreter's captions reach a participant; the site's kiosk page
//! recovers by itself after a server restart; every page and state passes axe-core's WCAG 2.1
//! A/AA rules; joining and raising a hand work with the keyboard alone. Screenshots of each view
//! go to target/screenshots/ (not committed).

mod common;

use std::time::Duration;

use common::chromium::{Chromium, Page};
use common::*;
use kursrelay::protocol::Role;
use serde_json::Value;

async fn decoding(browser: &mut Chromium, page: &Page, min_video_tracks: u64) -> Value {
    let expr = format!(
        "kursrelay.stats().then(s => s.videoTracks >= {min_video_tracks} && s.framesDecoded > 30 && s.audioPacketsReceived > 20 ? s : null)"
    );
    let first = browser.wait_for(page, &expr, 30).await;
    // Still rising.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = browser.eval(page, "kursrelay.stats()").await;
    assert!(
        later["framesDecoded"].as_u64() > first["framesDecoded"].as_u64(),
        "{first} then {later}"
    );
    later
}

/// Presses Tab until the control with `data-action` = `action` has the focus.
async fn tab_to(b: &mut Chromium, page: &Page, action: &str) {
    for _ in 0..40 {
        b.key(page, "Tab").await;
        let focused = b
            .eval(
                page,
                "document.activeElement && document.activeElement.dataset.action || ''",
            )
            .await;
        if focused == action {
            return;
        }
    }
    panic!("Tab never reached the {action} control");
}

async fn no_violations(browser: &mut Chromium, page: &Page, what: &str) {
    let violations = browser.axe(page).await;
    assert!(
        violations.is_empty(),
        "axe-core found WCAG 2.1 A/AA violations on {what}: {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_in_the_browser() {
    let server = TestServer::spawn_with("[web]\nhelp_phone = \"71 12 00 00\"\n").await;
    let base = format!("http://{}", server.addr);
    let tokens = [
        server.token("ui", Role::Leader, Some("Ola"), false).await,
        server
            .token("ui", Role::Participant, Some("Kari"), false)
            .await,
        server
            .token("ui", Role::Participant, Some("Per"), false)
            .await,
        server
            .token("ui", Role::Site, Some("Volda sjukehus, møterom 2"), false)
            .await,
        server
            .token("ui", Role::Interpreter, Some("Siri"), false)
            .await,
        server.token("ui", Role::Participant, None, true).await,
    ];
    let [leader_t, kari_t, per_t, site_t, tolk_t, open_t] = &tokens;
    let mut b = Chromium::launch().await;

    // The pre-join screens pass axe before anyone joins.
    let leader = b.open(&format!("{base}/publish.html#t={leader_t}")).await;
    // The help number from the configuration is on the page, as a link a phone can call.
    let help = b
        .wait_for(
            &leader,
            "(document.querySelector('footer.help a[href^=\"tel:\"]') || {}).textContent",
            10,
        )
        .await;
    assert_eq!(help, "71 12 00 00");
    no_violations(&mut b, &leader, "the leader's pre-join screen").await;
    b.screenshot(&leader, "ui-leader-prejoin").await;
    assert_eq!(
        b.eval(&leader, "kursrelay.start({}).then(r => r.role)")
            .await,
        "leader"
    );
    b.eval(&leader, "kursrelay.screenShare().then(() => true)")
        .await;

    let kari = b.open(&format!("{base}/watch.html#t={kari_t}")).await;
    no_violations(&mut b, &kari, "the participant's pre-join screen").await;
    b.eval(&kari, "kursrelay.start({}).then(() => true)").await;
    let site = b.open(&format!("{base}/watch.html#t={site_t}")).await;
    b.eval(&site, "kursrelay.start({}).then(() => true)").await;
    b.eval(&site, "kursrelay.setHeadcount(7).then(() => true)")
        .await;

    // Per joins with the keyboard alone: Tab to Join, Enter; Tab to the hand, Enter.
    let per = b.open(&format!("{base}/watch.html#t={per_t}")).await;
    tab_to(&mut b, &per, "join").await;
    b.key(&per, "Enter").await;
    b.wait_for(&per, "kursrelay.state() === 'joined'", 20).await;

    // Camera + screen from the leader: both participants and the site decode them.
    for (page, name) in [(&kari, "kari"), (&per, "per"), (&site, "site")] {
        decoding(&mut b, page, 2).await;
        no_violations(&mut b, page, name).await;
    }
    b.screenshot(&kari, "ui-participant").await;
    // On a phone-sized screen nothing needs sideways scrolling, and it still passes axe.
    b.phone(&kari, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.eval(
            &kari,
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        .await,
        true,
        "the participant view overflows a phone screen"
    );
    no_violations(&mut b, &kari, "the participant view on a phone").await;
    b.screenshot(&kari, "ui-participant-phone").await;
    b.phone(&kari, false).await;
    b.screenshot(&site, "ui-site-kiosk").await;
    b.wait_for(
        &leader,
        "(kursrelay.roster() || {}).participant_count === 9",
        10,
    )
    .await;
    b.screenshot(&leader, "ui-leader-console").await;
    no_violations(&mut b, &leader, "the leader console").await;
    // Chat is off in this session: no chat box anywhere.
    for page in [&leader, &kari] {
        assert_eq!(
            b.eval(page, "document.getElementById('chat-box').hidden")
                .await,
            true
        );
    }

    tab_to(&mut b, &per, "hand").await;
    b.key(&per, "Enter").await;
    b.wait_for(&per, "kursrelay.messages().includes('hand')", 10)
        .await;

    // Kari raises her hand; the leader clicks "give the floor"; the others see her; revoke.
    b.eval(&kari, "kursrelay.raiseHand().then(() => true)")
        .await;
    b.wait_for(
        &leader,
        "((kursrelay.roster() || {}).hands || []).length === 2",
        10,
    )
    .await;
    b.click(&leader, "[data-action='grant']").await;
    b.wait_for(&kari, "kursrelay.messages().includes('floor')", 10)
        .await;
    b.eval(&kari, "kursrelay.publishFloor().then(() => true)")
        .await;
    decoding(&mut b, &per, 3).await;
    b.screenshot(&kari, "ui-participant-floor").await;
    b.click(&leader, "[data-action='revoke']").await;
    b.wait_for(&per, "kursrelay.stats().then(s => s.videoTracks === 2)", 10)
        .await;

    // Someone on an open link waits in the lobby until the leader clicks "let in".
    let anna = b.open(&format!("{base}/watch.html#t={open_t}")).await;
    b.eval(&anna, "kursrelay.start({name: 'Anna'}).then(() => true)")
        .await;
    b.wait_for(&anna, "kursrelay.state() === 'lobby'", 10).await;
    no_violations(&mut b, &anna, "the lobby").await;
    b.screenshot(&anna, "ui-lobby").await;
    b.wait_for(
        &leader,
        "((kursrelay.roster() || {}).lobby || []).length === 1",
        10,
    )
    .await;
    b.click(&leader, "[data-action='admit']").await;
    b.wait_for(&anna, "kursrelay.state() === 'joined'", 10)
        .await;
    decoding(&mut b, &anna, 2).await;

    // The interpreter's captions appear on a participant's page.
    let tolk = b.open(&format!("{base}/publish.html#t={tolk_t}")).await;
    b.eval(&tolk, "kursrelay.start({}).then(() => true)").await;
    // Typed into the caption box and sent with Enter, as the interpreter does.
    b.click(&tolk, "#caption-text").await;
    b.type_text(&tolk, "Vi tek ein pause no.").await;
    b.key(&tolk, "Enter").await;
    b.wait_for(
        &kari,
        "kursrelay.captions().includes('Vi tek ein pause no.')",
        10,
    )
    .await;
    no_violations(&mut b, &tolk, "the interpreter view").await;
    b.screenshot(&tolk, "ui-interpreter").await;
    b.screenshot(&kari, "ui-participant-captions").await;

    // The server restarts; the kiosk reconnects by itself and decodes again.
    let server = server.restart().await;
    b.wait_for(
        &site,
        "kursrelay.state() === 'reconnecting' || kursrelay.state() === 'joined'",
        10,
    )
    .await;
    b.eval(&leader, "kursrelay.leave() && true").await;
    let leader_again = b.open(&format!("{base}/publish.html#t={leader_t}")).await;
    b.eval(&leader_again, "kursrelay.start({}).then(() => true)")
        .await;
    b.wait_for(&site, "kursrelay.state() === 'joined'", 30)
        .await;
    decoding(&mut b, &site, 1).await;
    b.screenshot(&site, "ui-site-after-restart").await;
    drop(b);
    server.shutdown().await;
}

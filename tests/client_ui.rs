//! The course client in a real browser: headless Chromium with fake cameras and microphones,
//! through the real server, looked at as its people would at 1920×1080 (a hall screen),
//! 1366×768 (a laptop) and 390×844 (a phone). Element boxes that must be on screen (captions,
//! the main picture, "Bli med", the leader's panel) are asserted inside the viewport at each
//! size; screenshots of every view and size go to target/screenshots/ (not committed). The
//! course runs end to end: the link is checked before any camera prompt, a leader without a
//! name on the link teaches with camera and screen, participants never get a camera prompt
//! until given the floor, an open-link person waits in the lobby and is let in with "admit
//! all", hands queue (each sees its place) and the leader is alerted, the hall screen shows the
//! lecture and the interpreter side by side with captions and no controls, the server restarts
//! and every role comes back by itself within 10 s, leaving asks first, the end leaves the
//! attendance CSV (for Norwegian Excel) downloadable. axe-core's WCAG 2.1 A/AA rules pass in
//! every state; joining, raising a hand and the hall screen's keys work by keyboard alone.

mod common;

use std::time::{Duration, Instant};

use common::chromium::{Chromium, Page};
use common::*;
use kursrelay::protocol::Role;
use serde_json::Value;

/// The three screens everything is looked at on: (width, height, phone, name).
const SIZES: [(u32, u32, bool, &str); 3] = [
    (1920, 1080, false, "1080p"),
    (1366, 768, false, "laptop"),
    (390, 844, true, "phone"),
];

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
    for _ in 0..60 {
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

/// Asserts that each selector's first element is shown, with its whole box inside the
/// viewport, and that nothing makes the page scroll sideways.
async fn in_view(b: &mut Chromium, page: &Page, selectors: &[&str], what: &str) {
    let js = format!(
        "(() => {{ const bad = []; \
         for (const sel of {sels}) {{ const e = document.querySelector(sel); \
           if (!e || e.closest('[hidden]')) {{ bad.push(sel + ': not shown'); continue; }} \
           const r = e.getBoundingClientRect(); \
           if (r.width < 1 || r.height < 1) bad.push(sel + ': empty box'); \
           else if (r.left < -1 || r.top < -1 || r.right > innerWidth + 1 || r.bottom > innerHeight + 1) \
             bad.push(`${{sel}}: ${{Math.round(r.left)}},${{Math.round(r.top)}}–${{Math.round(r.right)}},${{Math.round(r.bottom)}} outside ${{innerWidth}}×${{innerHeight}}`); }} \
         if (document.documentElement.scrollWidth > innerWidth + 1) bad.push('the page scrolls sideways'); \
         return bad; }})()",
        sels = serde_json::to_string(selectors).unwrap()
    );
    let bad = b.eval(page, &js).await;
    assert_eq!(bad, serde_json::json!([]), "{what}: {bad}");
}

/// Looks at a page at all three sizes: the selectors on screen at each, a screenshot each.
async fn at_all_sizes(b: &mut Chromium, page: &Page, name: &str, selectors: &[&str]) {
    for (w, h, phone, size) in SIZES {
        b.viewport(page, w, h, phone).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        in_view(b, page, selectors, &format!("{name} at {size}")).await;
        b.screenshot(page, &format!("ui-{name}-{size}")).await;
    }
    b.viewport(page, 1366, 768, false).await;
}

/// The area of an element's box as a share of the viewport's.
async fn share_of_screen(b: &mut Chromium, page: &Page, selector: &str) -> f64 {
    let js = format!(
        "(() => {{ const r = document.querySelector({sel}).getBoundingClientRect(); \
         return (r.width * r.height) / (innerWidth * innerHeight); }})()",
        sel = serde_json::to_string(selector).unwrap()
    );
    b.eval(page, &js).await.as_f64().unwrap()
}

async fn state_is(b: &mut Chromium, page: &Page, state: &str) {
    b.wait_for(page, &format!("kursrelay.state() === '{state}'"), 20)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_in_the_browser() {
    let server = TestServer::spawn_with("[web]\nhelp_phone = \"71 12 00 00\"\n").await;
    let base = format!("http://{}", server.addr);
    // The leader's link carries no name (as `session links --defaults` makes it).
    let tokens = [
        server.token("ui", Role::Leader, None, false).await,
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

    // The leader's pre-join: the link is checked, the course's and session's titles shown,
    // "Bli med" on screen at every size.
    let leader = b.open(&format!("{base}/course.html#t={leader_t}")).await;
    state_is(&mut b, &leader, "prejoin").await;
    let help = b
        .wait_for(
            &leader,
            "(document.querySelector('footer.help a[href^=\"tel:\"]') || {}).textContent",
            10,
        )
        .await;
    assert_eq!(help, "71 12 00 00");
    assert_eq!(
        b.eval(
            &leader,
            "document.getElementById('course-title').textContent"
        )
        .await,
        "Testkurs ui"
    );
    assert_eq!(
        b.eval(
            &leader,
            "document.getElementById('session-title').textContent"
        )
        .await,
        "Dag 1 ui"
    );
    // Every language has every text.
    assert_eq!(
        b.eval(&leader, "import('/i18n.js').then(m => { const k = (l) => Object.keys(m.LANGS[l]).sort().join(); return k('nb') === k('nn') && k('nb') === k('en'); })").await,
        true,
        "nb, nn and en do not have the same keys"
    );
    at_all_sizes(
        &mut b,
        &leader,
        "leader-prejoin",
        &["#join", "#course-title"],
    )
    .await;
    no_violations(&mut b, &leader, "the leader's pre-join screen").await;
    // No name typed: the leader is shown by role.
    b.click(&leader, "#join").await;
    state_is(&mut b, &leader, "joined").await;
    b.eval(&leader, "kursrelay.screenShare().then(() => true)")
        .await;

    // A participant on an old-style link (watch.html redirects to the one page): no camera
    // prompt before joining, nor after.
    let kari = b.open(&format!("{base}/watch.html#t={kari_t}")).await;
    state_is(&mut b, &kari, "prejoin").await;
    assert_eq!(b.eval(&kari, "location.pathname").await, "/course.html");
    at_all_sizes(
        &mut b,
        &kari,
        "participant-prejoin",
        &["#join", "#course-title"],
    )
    .await;
    no_violations(&mut b, &kari, "the participant's pre-join screen").await;
    b.click(&kari, "#join").await;
    state_is(&mut b, &kari, "joined").await;
    assert_eq!(b.eval(&kari, "window.__gumCalls").await, 0);

    // The hall screen joins by itself; the adviser sets the headcount with the keyboard.
    let site = b.open(&format!("{base}/course.html#t={site_t}")).await;
    state_is(&mut b, &site, "joined").await;
    assert_eq!(b.eval(&site, "window.__gumCalls").await, 0);
    b.key(&site, "+").await;
    b.wait_for(
        &site,
        "((kursrelay.roster() || {}).members || []).some(m => m.role === 'site' && m.headcount === 1)",
        10,
    )
    .await;
    b.eval(&site, "kursrelay.setHeadcount(7).then(() => true)")
        .await;

    // Per joins with the keyboard alone: Tab to Join, Enter.
    let per = b.open(&format!("{base}/course.html#t={per_t}")).await;
    state_is(&mut b, &per, "prejoin").await;
    tab_to(&mut b, &per, "join").await;
    b.key(&per, "Enter").await;
    state_is(&mut b, &per, "joined").await;

    // Camera + screen from the leader: both participants and the site decode them.
    for (page, name) in [(&kari, "kari"), (&per, "per"), (&site, "site")] {
        decoding(&mut b, page, 2).await;
        no_violations(&mut b, page, name).await;
    }
    // The leader is shown by role, not as a blank.
    assert_eq!(
        b.eval(&kari, "[...document.querySelectorAll('#members li')].some(li => li.textContent.startsWith('Kursleder – kursleder'))").await,
        true
    );

    // The interpreter: camera pinned for everyone, captions typed with Enter.
    let tolk = b.open(&format!("{base}/course.html#t={tolk_t}")).await;
    state_is(&mut b, &tolk, "prejoin").await;
    b.click(&tolk, "#join").await;
    state_is(&mut b, &tolk, "joined").await;
    b.click(&tolk, "#caption-text").await;
    b.type_text(&tolk, "Vi tek ein pause no.").await;
    b.key(&tolk, "Enter").await;
    b.wait_for(
        &kari,
        "kursrelay.captions().includes('Vi tek ein pause no.')",
        10,
    )
    .await;
    b.wait_for(
        &site,
        "!document.getElementById('interp-slot').hidden && kursrelay.captions().length === 1",
        10,
    )
    .await;
    no_violations(&mut b, &tolk, "the interpreter view").await;
    at_all_sizes(
        &mut b,
        &tolk,
        "interpreter",
        &["#captions", "#main-slot figure[data-pos=main] video"],
    )
    .await;
    // On a laptop the caption box is beside the picture, on screen.
    in_view(
        &mut b,
        &tolk,
        &["#caption-text", "#caption-send"],
        "the interpreter's caption box",
    )
    .await;

    // The participant: picture, captions and the hand on screen at every size.
    at_all_sizes(
        &mut b,
        &kari,
        "participant",
        &[
            "#main-slot figure[data-pos=main] video",
            "#captions",
            "#hand",
        ],
    )
    .await;
    b.viewport(&kari, 390, 844, true).await;
    no_violations(&mut b, &kari, "the participant view on a phone").await;
    // A phone on its side: the picture gets most of the height.
    b.viewport(&kari, 844, 390, true).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    in_view(
        &mut b,
        &kari,
        &[
            "#main-slot figure[data-pos=main] video",
            "#captions",
            "#hand",
        ],
        "phone landscape",
    )
    .await;
    let media_h = b
        .eval(
            &kari,
            "document.getElementById('media').getBoundingClientRect().height / innerHeight",
        )
        .await
        .as_f64()
        .unwrap();
    assert!(
        media_h > 0.5,
        "landscape picture is {media_h} of the height"
    );
    b.screenshot(&kari, "ui-participant-phone-landscape").await;

    // A full caption box, at every size: whole lines only (the oldest one shown is not cut in
    // half), the newest at the bottom — also after the screen changed size.
    for text in [
        "Neste gong snakkar vi om kosthald og mosjon i kvardagen.",
        "Ta gjerne med spørsmåla dykkar.",
        "Hugs å ta medisinane som avtalt med legen.",
        "Takk for i dag, alle saman.",
    ] {
        b.click(&tolk, "#caption-text").await;
        b.type_text(&tolk, text).await;
        b.key(&tolk, "Enter").await;
        // Sent and the field emptied before the interpreter types the next line.
        b.wait_for(
            &kari,
            &format!("kursrelay.captions().includes({})", serde_json::json!(text)),
            10,
        )
        .await;
        b.wait_for(
            &tolk,
            "document.getElementById('caption-text').value === ''",
            10,
        )
        .await;
    }
    for (w, h, phone) in [
        (1920, 1080, false),
        (1366, 768, false),
        (390, 844, true),
        (844, 390, true),
    ] {
        b.viewport(&kari, w, h, phone).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let shown = b
            .eval(
                &kari,
                "(() => { const c = document.getElementById('captions');                  const lh = parseFloat(getComputedStyle(c).lineHeight);                  const last = c.lastElementChild.getBoundingClientRect(), box = c.getBoundingClientRect();                  return { lines: c.clientHeight / lh, full: c.scrollHeight > c.clientHeight + 1,                           atBottom: c.scrollHeight - c.scrollTop - c.clientHeight < 2,                           newestInside: last.bottom <= box.bottom + 1 && last.top >= box.top - 1 }; })()",
            )
            .await;
        let lines = shown["lines"].as_f64().unwrap();
        assert_eq!(shown["full"], true, "{w}×{h}: {shown}");
        assert!(
            lines >= 1.95 && (lines - lines.round()).abs() < 0.05,
            "{w}×{h}: the caption box shows {lines} lines: {shown}"
        );
        assert_eq!(shown["atBottom"], true, "{w}×{h}: {shown}");
        assert_eq!(shown["newestInside"], true, "{w}×{h}: {shown}");
        b.screenshot(&kari, &format!("ui-captions-full-{w}x{h}"))
            .await;
    }
    b.viewport(&kari, 1366, 768, false).await;

    // Fullscreen keeps the captions.
    b.phone(&kari, false).await;
    // The button shows once a picture is there; under load the layout may still move between
    // finding the button and the click landing, so a click that did not take is repeated, as
    // a person would.
    b.wait_for(
        &kari,
        "(() => { const f = document.querySelector('#fullscreen'); return f && !f.hidden && f.offsetParent !== null; })()",
        10,
    )
    .await;
    let mut entered = false;
    for _ in 0..4 {
        b.click(&kari, "#fullscreen").await;
        if b.try_wait_for(
            &kari,
            "document.fullscreenElement && document.fullscreenElement.id === 'view'",
            4,
        )
        .await
        {
            entered = true;
            break;
        }
    }
    assert!(entered, "the view never went fullscreen");
    in_view(
        &mut b,
        &kari,
        &["#captions", "#main-slot figure[data-pos=main] video"],
        "fullscreen",
    )
    .await;
    b.screenshot(&kari, "ui-participant-fullscreen").await;
    b.click(&kari, "#fullscreen").await;
    b.wait_for(&kari, "!document.fullscreenElement", 10).await;

    // The hall screen: lecture and interpreter side by side, the interpreter at least a
    // quarter of the screen, captions, the course's name and status, no controls.
    for (w, h, phone, size) in SIZES {
        b.viewport(&site, w, h, phone).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        in_view(
            &mut b,
            &site,
            &[
                "#main-slot figure[data-pos=main] video",
                "#interp-slot video",
                "#captions",
                "#course-title",
                "#kiosk-status",
            ],
            &format!("the hall screen at {size}"),
        )
        .await;
        let visible_controls = b
            .eval(
                &site,
                "[...document.querySelectorAll('button, input, select')].filter(e => { const r = e.getBoundingClientRect(); \
                 return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight && r.right > 0 && r.left < innerWidth; }).length",
            )
            .await;
        assert_eq!(visible_controls, 0, "controls on the hall screen at {size}");
        if !phone {
            let interp = share_of_screen(&mut b, &site, "#interp-slot video").await;
            assert!(
                interp >= 0.25,
                "interpreter is {interp} of the screen at {size}"
            );
        }
        b.screenshot(&site, &format!("ui-site-{size}")).await;
    }
    b.viewport(&site, 1366, 768, false).await;
    assert_eq!(
        b.eval(&site, "document.getElementById('kiosk-status').textContent")
            .await,
        "Tilkoblet"
    );
    // The adviser's panel: K shows it (keyboard only), and it passes axe.
    b.key(&site, "k").await;
    b.wait_for(
        &site,
        "document.getElementById('adviser').contains(document.activeElement)",
        5,
    )
    .await;
    b.screenshot(&site, "ui-site-adviser").await;
    no_violations(&mut b, &site, "the hall screen with the adviser's panel").await;
    b.key(&site, "k").await;

    // Hands: Per by keyboard, then Kari; each sees its place; the leader is alerted.
    tab_to(&mut b, &per, "hand").await;
    b.key(&per, "Enter").await;
    b.wait_for(&per, "(kursrelay.roster() || {}).hand_position === 1", 10)
        .await;
    b.eval(&kari, "kursrelay.raiseHand().then(() => true)")
        .await;
    b.wait_for(
        &kari,
        "document.getElementById('hand-place').textContent.includes('2')",
        10,
    )
    .await;
    b.wait_for(
        &leader,
        "document.title.startsWith('(2)') && !document.getElementById('banner').hidden",
        10,
    )
    .await;
    // The leader lowers Per's hand without giving the floor.
    b.click(&leader, "#hands [data-action='lower-hand']").await;
    b.wait_for(
        &per,
        "document.getElementById('hand').getAttribute('aria-pressed') === 'false'",
        10,
    )
    .await;
    b.wait_for(
        &leader,
        "((kursrelay.roster() || {}).hands || []).length === 1 && document.querySelectorAll('#hands [data-action=grant-hand]').length === 1",
        10,
    )
    .await;
    // Kari is given the floor: only now is she asked for camera and microphone.
    b.click(&leader, "[data-action='grant-hand']").await;
    b.wait_for(&kari, "kursrelay.messages().includes('floor')", 10)
        .await;
    b.click(&kari, "[data-action='floor-publish']").await;
    b.wait_for(&kari, "window.__gumCalls > 0", 10).await;
    decoding(&mut b, &per, 3).await;
    b.screenshot(&kari, "ui-participant-floor").await;
    b.click(&leader, "[data-action='revoke']").await;
    b.wait_for(&per, "kursrelay.stats().then(s => s.videoTracks === 3)", 10)
        .await;

    // The hall is given the floor: the room's controls open by themselves with "turn on
    // microphone and camera" ready for Enter; only then is the room's camera asked for.
    assert_eq!(b.eval(&site, "window.__gumCalls").await, 0);
    let site_id = b
        .eval(
            &leader,
            "(kursrelay.roster().members.find(m => m.role === 'site') || {}).member_id",
        )
        .await;
    let site_id = site_id.as_str().unwrap().to_owned();
    b.click(&leader, &format!("[id='present-grant_floor-{site_id}']"))
        .await;
    b.wait_for(
        &site,
        "document.getElementById('adviser').classList.contains('open') && document.activeElement && document.activeElement.dataset.action === 'floor-publish'",
        10,
    )
    .await;
    b.screenshot(&site, "ui-site-floor").await;
    b.key(&site, "Enter").await;
    b.wait_for(&site, "window.__gumCalls > 0", 10).await;
    decoding(&mut b, &per, 3).await;
    b.click(&leader, &format!("[id='present-revoke_floor-{site_id}']"))
        .await;
    b.wait_for(&per, "kursrelay.stats().then(s => s.videoTracks === 3)", 10)
        .await;
    b.wait_for(
        &site,
        "!document.getElementById('adviser').classList.contains('open')",
        10,
    )
    .await;

    // Per is given the floor but his browser refuses the camera: the floor goes back and the
    // leader is told (banner and list), rather than waiting for a voice that cannot come.
    b.eval(
        &per,
        "navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('refused', 'NotAllowedError')); true",
    )
    .await;
    let per_id = b
        .eval(&per, "kursrelay.memberId()")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    b.click(&leader, &format!("[id='present-grant_floor-{per_id}']"))
        .await;
    b.wait_for(&per, "!document.getElementById('floor-publish').hidden", 10)
        .await;
    b.click(&per, "[data-action='floor-publish']").await;
    b.wait_for(
        &leader,
        "document.getElementById('banner-text').textContent.includes('Per fikk ordet, men nettleseren sa nei')",
        10,
    )
    .await;
    b.wait_for(
        &per,
        "document.getElementById('alert').textContent.includes('Kurslederen har fått beskjed') && document.getElementById('hand').hidden === false",
        10,
    )
    .await;
    b.screenshot(&leader, "ui-leader-declined").await;

    // The leader's alert sound can be turned off (kept for next time), by keyboard.
    b.eval(&leader, "document.getElementById('stage-heading').focus()")
        .await;
    tab_to(&mut b, &leader, "alert-sound").await;
    b.key(&leader, "Enter").await;
    assert_eq!(
        b.eval(
            &leader,
            "[document.getElementById('alert-sound').getAttribute('aria-pressed'), localStorage.getItem('kursrelay.alert_sound')].join()"
        )
        .await,
        "false,0"
    );
    b.key(&leader, "Enter").await;

    // In English: the same view, every text changed (and still axe-clean).
    b.eval(
        &kari,
        "(() => { const s = document.getElementById('lang'); s.value = 'en'; s.dispatchEvent(new Event('change')); return true; })()",
    )
    .await;
    assert_eq!(
        b.eval(&kari, "document.getElementById('hand').textContent")
            .await,
        "Raise your hand"
    );
    assert_eq!(b.eval(&kari, "document.documentElement.lang").await, "en");
    no_violations(&mut b, &kari, "the participant view in English").await;
    b.screenshot(&kari, "ui-participant-english").await;
    b.eval(
        &kari,
        "(() => { const s = document.getElementById('lang'); s.value = 'nb'; s.dispatchEvent(new Event('change')); return true; })()",
    )
    .await;

    // Two people on the open link, no name typed: both wait; the leader lets them in at once.
    let anna = b.open(&format!("{base}/course.html#t={open_t}")).await;
    state_is(&mut b, &anna, "prejoin").await;
    at_all_sizes(&mut b, &anna, "open-prejoin", &["#join", "#name"]).await;
    b.click(&anna, "#join").await;
    state_is(&mut b, &anna, "lobby").await;
    no_violations(&mut b, &anna, "the lobby").await;
    at_all_sizes(&mut b, &anna, "lobby", &["#lobby-heading", "#course-title"]).await;
    let bo = b.open(&format!("{base}/course.html#t={open_t}")).await;
    b.eval(&bo, "kursrelay.start({name: 'Bo'}).then(() => true)")
        .await;
    b.wait_for(
        &leader,
        "((kursrelay.roster() || {}).lobby || []).length === 2 && document.title.startsWith('(2)')",
        10,
    )
    .await;
    // The panel scrolls by itself (the clicks above scrolled it); from its top, the lobby is
    // in view beside the stage at every size.
    b.eval(&leader, "document.getElementById('side').scrollTop = 0")
        .await;
    at_all_sizes(
        &mut b,
        &leader,
        "leader-console",
        &["#view", "#captions", "#banner"],
    )
    .await;
    // On a laptop the panel is beside the stage (on a phone, below it).
    in_view(
        &mut b,
        &leader,
        &["#side", "#lobby-list-heading", "#lobby [data-action=admit]"],
        "the lobby in the leader's panel",
    )
    .await;
    no_violations(&mut b, &leader, "the leader console with people waiting").await;
    // "Let everyone in", by keyboard.
    b.eval(&leader, "document.getElementById('stage-heading').focus()")
        .await;
    tab_to(&mut b, &leader, "admit-all").await;
    b.key(&leader, "Enter").await;
    state_is(&mut b, &anna, "joined").await;
    state_is(&mut b, &bo, "joined").await;
    // Anna reloads her page: straight back in, no name to type, no second wait.
    b.reload(&anna).await;
    state_is(&mut b, &anna, "joined").await;
    assert_eq!(
        b.eval(&anna, "kursrelay.messages().includes('lobby')")
            .await,
        false
    );
    // Anna chose no name: she is "Deltaker <n>" for everyone.
    b.wait_for(
        &kari,
        "[...document.querySelectorAll('#members li')].some(li => /^Deltaker \\d+ – deltaker/.test(li.textContent))",
        10,
    )
    .await;

    // The attendance list for Norwegian Excel: BOM, `;`, decimal comma, local time.
    b.click(&leader, "[data-action='csv']").await;
    let csv = b
        .wait_for(&leader, "window.kursrelayLastCsv || ''", 10)
        .await;
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with('\u{feff}'), "no BOM");
    let header: Vec<&str> = csv
        .lines()
        .next()
        .unwrap()
        .trim_start_matches('\u{feff}')
        .split(';')
        .collect();
    assert_eq!(header.len(), 17, "{csv}");
    // In Norwegian, like its readers (issue 21): headers, roles, ja/nei.
    assert_eq!(header[0], "økt_id", "{csv}");
    assert!(csv.contains(";deltaker;Kari;"), "{csv}");

    // The server restarts: every role comes back by itself, without a click, within 10 s —
    // the open-link person without the lobby, the leader and interpreter sending again.
    let server = server.restart().await;
    let back = Instant::now();
    for (page, who) in [
        (&leader, "leader"),
        (&kari, "kari"),
        (&per, "per"),
        (&site, "site"),
        (&tolk, "interpreter"),
        (&anna, "open link"),
    ] {
        let left = Duration::from_secs(10).saturating_sub(back.elapsed());
        let deadline = Instant::now() + left;
        loop {
            let s = b.eval(page, "kursrelay.state()").await;
            if s == "joined" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{who} is not back 10 s after the restart: {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The leader's camera and the interpreter's come back on their own (the screen needs a
    // click, and the leader is told so).
    b.wait_for(&site, "!document.getElementById('interp-slot').hidden", 15)
        .await;
    decoding(&mut b, &kari, 2).await;
    b.wait_for(
        &leader,
        "document.getElementById('alert').textContent.includes('Del skjermen')",
        5,
    )
    .await;
    b.screenshot(&site, "ui-site-after-restart").await;

    // Leaving asks first ("no" has the focus and keeps you in); by keyboard alone; the
    // goodbye is not an error.
    b.eval(&per, "document.getElementById('stage-heading').focus()")
        .await;
    tab_to(&mut b, &per, "leave").await;
    b.key(&per, "Enter").await;
    b.wait_for(&per, "document.getElementById('confirm').open", 5)
        .await;
    no_violations(&mut b, &per, "the leave question").await;
    b.key(&per, "Enter").await;
    b.wait_for(&per, "!document.getElementById('confirm').open", 5)
        .await;
    assert_eq!(b.eval(&per, "kursrelay.state()").await, "joined");
    b.click(&per, "[data-action='leave']").await;
    tab_to(&mut b, &per, "confirm-yes").await;
    b.key(&per, "Enter").await;
    state_is(&mut b, &per, "left").await;
    assert_eq!(
        b.eval(&per, "document.getElementById('alert').textContent")
            .await,
        ""
    );
    no_violations(&mut b, &per, "the goodbye").await;
    at_all_sizes(&mut b, &per, "left", &["#ended-text", "#rejoin"]).await;

    // The leader ends the course; the attendance list is still there afterwards.
    b.click(&leader, "[data-action='end']").await;
    b.click(&leader, "[data-action='confirm-yes']").await;
    state_is(&mut b, &leader, "left").await;
    state_is(&mut b, &kari, "left").await;
    b.eval(&leader, "window.kursrelayLastCsv = ''; true").await;
    b.click(&leader, "[data-action='csv-after']").await;
    b.wait_for(
        &leader,
        "(window.kursrelayLastCsv || '').includes(';Kari;')",
        10,
    )
    .await;
    no_violations(&mut b, &leader, "the leader after the end").await;
    b.screenshot(&leader, "ui-leader-after-end").await;

    // The ended link, opened again: a full-page message with the help number, no camera.
    b.reload(&kari).await;
    state_is(&mut b, &kari, "problem").await;
    assert_eq!(b.eval(&kari, "window.__gumCalls").await, 0);
    drop(b);
    server.shutdown().await;
}

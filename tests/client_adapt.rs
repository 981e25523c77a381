//! The course page following what changes under it, in headless Chromium through the real
//! server: the organisers turn chat on and off during the course (every page's chat box
//! follows at once, said politely to screen readers); a hall screen's label with one long word
//! wraps only between words and stays inside its tile; and the web side of per-viewer
//! adaptation (issue 20): cameras publish three simulcast layers when `joined` says
//! `simulcast: true`, a screen share two at its full size (5 and 30 frames a second; one layer
//! each when the server does not take simulcast) and a viewer gets the slides at full size;
//! the page tells the
//! server the height it shows video at and the viewer's "save data" choice
//! (`video_preference`, quiet when an older server does not know it), a `video_quality`
//! "paused" shows a calm notice over that picture that never covers the captions, and
//! `kursrelay.stats()` has per-track frame rate, size, freezes, audio concealment and the
//! quality. axe-core's WCAG 2.1 A/AA rules pass in the new states. Screenshots go to
//! target/screenshots/ (not committed).
//!
//! Server part pending (issue 20, another branch): the server does not yet send
//! `joined.simulcast`, does not know `video_preference` (it answers `unknown_type`) and
//! never sends `video_quality`. Where a step depends on that, the test says so; the
//! three-layer offer is shown with `joined` altered in the page (SIMULCAST_SHIM), and the
//! notices by handing a `video_quality` to the page's own message handler.

mod common;

use std::time::Duration;

use common::chromium::{Chromium, Page};
use common::*;
use kursrelay::protocol::Role;
use serde_json::{json, Value};

async fn state_is(b: &mut Chromium, page: &Page, state: &str) {
    b.wait_for(page, &format!("kursrelay.state() === '{state}'"), 20)
        .await;
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn no_violations(b: &mut Chromium, page: &Page, what: &str) {
    let violations = b.axe(page).await;
    assert!(
        violations.is_empty(),
        "axe-core found WCAG 2.1 A/AA violations on {what}: {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

async fn set_lang(b: &mut Chromium, page: &Page, lang: &str) {
    b.eval(
        page,
        &format!("(() => {{ const s = document.getElementById('lang'); s.value = '{lang}'; s.dispatchEvent(new Event('change')); return true; }})()"),
    )
    .await;
}

async fn text_of(b: &mut Chromium, page: &Page, id: &str) -> String {
    b.eval(
        page,
        &format!("document.getElementById('{id}').textContent"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// Asserts that each selector's first element is shown with its whole box in the viewport.
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
    assert_eq!(bad, json!([]), "{what}: {bad}");
}

/// Which of `others` (those shown) the box of `sel` overlaps.
async fn covers(b: &mut Chromium, page: &Page, sel: &str, others: &[&str]) -> Value {
    let js = format!(
        "(() => {{ const a = document.querySelector({sel}).getBoundingClientRect(); \
         return {others}.filter(o => {{ const e = document.querySelector(o); \
           if (!e || e.hidden || e.closest('[hidden]') || e.offsetParent === null) return false; \
           const c = e.getBoundingClientRect(); \
           return a.left < c.right - 1 && c.left < a.right - 1 && a.top < c.bottom - 1 && c.top < a.bottom - 1; }}); }})()",
        sel = serde_json::to_string(sel).unwrap(),
        others = serde_json::to_string(others).unwrap()
    );
    b.eval(page, &js).await
}

/// What a paused picture's notice must leave free: the captions, the sound band, the other
/// pictures, the picture's own label, the fullscreen button.
const LEAVE_FREE: [&str; 7] = [
    "#captions-box",
    "#sound-big",
    "#main-slot figure[data-pos=inset]",
    "#main-slot figure[data-pos=other]",
    "#main-slot figure[data-pos=main] figcaption",
    "#interp-slot",
    "#fullscreen",
];

/// Presses Tab until the control with `data-action` = `action` has the focus.
async fn tab_to(b: &mut Chromium, page: &Page, action: &str) {
    for _ in 0..80 {
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

/// The `video_preference` messages the page has sent so far.
async fn preferences(b: &mut Chromium, page: &Page) -> Vec<Value> {
    b.eval(
        page,
        "kursrelay.sent().filter(m => m.type === 'video_preference')",
    )
    .await
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// Hands a server message to the page's own handler, as if the server had sent it.
async fn from_server(b: &mut Chromium, page: &Page, msg: Value) {
    b.eval(
        page,
        &format!(
            "(kursrelay.client._onMessage({}), true)",
            serde_json::to_string(&msg.to_string()).unwrap()
        ),
    )
    .await;
}

async fn patch_session(server: &TestServer, session: &str, body: Value) {
    let auth = format!("Bearer {ADMIN_KEY}");
    let reply = http_request(
        server.addr,
        "PATCH",
        &format!("/api/sessions/{session}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_follows_the_session_setting_live() {
    let server = TestServer::spawn().await;
    let base = format!("http://{}", server.addr);
    // The label has no "chat" in it: the session starts with chat off.
    let leader_t = server
        .token("live", Role::Leader, Some("Lise"), false)
        .await;
    let kari_t = server
        .token("live", Role::Participant, Some("Kari"), false)
        .await;
    let session = server.session("live").await;
    let mut b = Chromium::launch().await;
    let leader = b.open(&format!("{base}/course.html#t={leader_t}")).await;
    b.eval(&leader, "kursrelay.start({}).then(() => true)")
        .await;
    let kari = b.open(&format!("{base}/course.html#t={kari_t}")).await;
    b.viewport(&kari, 1366, 768, false).await;
    b.eval(&kari, "kursrelay.start({}).then(() => true)").await;
    state_is(&mut b, &kari, "joined").await;
    let chat_shown = "!document.getElementById('chat-box').hidden && document.getElementById('chat-box').offsetParent !== null";
    let chat_gone = "document.getElementById('chat-box').hidden";
    assert_eq!(b.eval(&kari, chat_gone).await, true, "chat is off at first");
    assert_eq!(b.eval(&leader, chat_gone).await, true);

    // Turned on during the course: both pages show the box at once, and say so.
    patch_session(&server, &session, json!({"chat_enabled": true})).await;
    b.wait_for(&kari, chat_shown, 5).await;
    b.wait_for(&leader, chat_shown, 5).await;
    b.wait_for(
        &kari,
        "document.getElementById('announce').textContent === 'Chat er slått på. Nå kan du skrive meldinger.'",
        5,
    )
    .await;
    assert_eq!(
        b.eval(
            &kari,
            "document.getElementById('announce').getAttribute('aria-live')"
        )
        .await,
        "polite"
    );
    // And it works: Kari's line reaches the leader.
    b.eval(&kari, "document.getElementById('chat-text').focus(), true")
        .await;
    b.type_text(&kari, "Kan du gjenta det siste?").await;
    b.key(&kari, "Enter").await;
    b.wait_for(
        &leader,
        "document.getElementById('chat-log').textContent.includes('Kan du gjenta det siste?')",
        10,
    )
    .await;
    b.screenshot(&kari, "adapt-chat-on-laptop").await;
    no_violations(&mut b, &kari, "the participant after chat was turned on").await;

    // Turned off: gone at once (the focus, which was in it, goes back to the course), said in
    // the page's language, and in the new one after a switch.
    patch_session(&server, &session, json!({"chat_enabled": false})).await;
    b.wait_for(&kari, chat_gone, 5).await;
    b.wait_for(&leader, chat_gone, 5).await;
    b.wait_for(
        &kari,
        "document.getElementById('announce').textContent === 'Chat er slått av for dette kurset nå.'",
        5,
    )
    .await;
    assert_eq!(
        b.eval(
            &kari,
            "!document.getElementById('chat-box').contains(document.activeElement)"
        )
        .await,
        true
    );
    assert_eq!(text_of(&mut b, &kari, "alert").await, "", "no error shown");
    set_lang(&mut b, &kari, "nn").await;
    assert_eq!(
        text_of(&mut b, &kari, "announce").await,
        "Chat er slått av for dette kurset no."
    );
    patch_session(&server, &session, json!({"chat_enabled": true})).await;
    b.wait_for(&kari, chat_shown, 5).await;
    b.wait_for(
        &kari,
        "document.getElementById('announce').textContent === 'Chat er slått på. No kan du skrive meldingar.'",
        5,
    )
    .await;
    drop(b);
    server.shutdown().await;
}

/// Stands in for the server part of issue 20 in one page only: every `joined` the page
/// receives says `simulcast: true` (the server does not send the flag yet).
const SIMULCAST_SHIM: &str = "(() => { const Real = window.WebSocket; \
    window.WebSocket = class extends Real { \
      set onmessage(fn) { super.onmessage = (ev) => { let data = ev.data; \
        try { const m = JSON.parse(data); if (m.type === 'joined') { m.simulcast = true; data = JSON.stringify(m); } } catch {} \
        fn({ data }); }; } \
      get onmessage() { return super.onmessage; } }; })()";

/// The publish connection's offer and the rids of each video sender, as the page made them.
async fn published(b: &mut Chromium, page: &Page) -> Value {
    b.eval(
        page,
        "(() => { const pc = kursrelay.client._conn.publish.pc; \
         return { sdp: pc.localDescription.sdp, answered: pc.signalingState === 'stable' && Boolean(pc.remoteDescription), \
           video: pc.getTransceivers().filter(t => t.sender.track && t.sender.track.kind === 'video') \
             .map(t => ({ label: t.sender.track.label, rids: (t.sender.getParameters().encodings || []).map(e => e.rid || null) })) }; })()",
    )
    .await
}

fn simulcast_lines(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .filter(|l| l.starts_with("a=simulcast") || l.starts_with("a=rid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_when_the_server_takes_it() {
    let server = TestServer::spawn().await;
    let base = format!("http://{}", server.addr);
    let lise_t = server
        .token("plain", Role::Leader, Some("Lise"), false)
        .await;
    let rita_t = server
        .token("sim", Role::Representative, Some("Rita"), false)
        .await;
    let mut b = Chromium::launch().await;

    // The real server's `joined`: today without `simulcast`, so one layer. When the server
    // part lands (`simulcast: true`), the same lines check three layers.
    let lise = b.open(&format!("{base}/course.html#t={lise_t}")).await;
    b.eval(&lise, "kursrelay.start({}).then(() => true)").await;
    let simulcast = b.eval(&lise, "kursrelay.client.simulcast").await;
    let p = published(&mut b, &lise).await;
    let sdp = p["sdp"].as_str().unwrap();
    assert_eq!(p["answered"], true, "{p}");
    if simulcast == true {
        // Needs the server part.
        assert!(sdp.contains("a=simulcast:send q;h;f"), "{sdp}");
        assert_eq!(p["video"][0]["rids"], json!(["q", "h", "f"]), "{p}");
    } else {
        assert!(
            simulcast_lines(sdp).is_empty(),
            "{:?}",
            simulcast_lines(sdp)
        );
        assert_eq!(p["video"].as_array().unwrap().len(), 1, "{p}");
        assert_eq!(p["video"][0]["rids"].as_array().unwrap().len(), 1, "{p}");
    }

    // `joined` says simulcast (altered in this page, see SIMULCAST_SHIM): the camera goes out
    // in three layers, lowest first, each with its cap; the screen share stays one layer.
    let rita = b.open_blank().await;
    b.call(
        Some(rita.session()),
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": SIMULCAST_SHIM}),
    )
    .await;
    b.navigate(&rita, &format!("{base}/course.html#t={rita_t}"))
        .await;
    b.eval(&rita, "kursrelay.start({}).then(() => true)").await;
    assert_eq!(b.eval(&rita, "kursrelay.client.simulcast").await, true);
    let p = published(&mut b, &rita).await;
    let sdp = p["sdp"].as_str().unwrap();
    assert!(
        sdp.contains("a=simulcast:send q;h;f")
            && sdp.contains("a=rid:q send")
            && sdp.contains("a=rid:h send")
            && sdp.contains("a=rid:f send"),
        "{:?}",
        simulcast_lines(sdp)
    );
    assert_eq!(p["video"][0]["rids"], json!(["q", "h", "f"]), "{p}");
    let encodings = b
        .eval(
            &rita,
            "kursrelay.client._conn.publish.pc.getSenders().find(s => s.track && s.track.kind === 'video').getParameters().encodings \
             .map(e => [e.rid, e.scaleResolutionDownBy || 1, e.maxBitrate])",
        )
        .await;
    assert_eq!(
        encodings,
        json!([["q", 4, 150000], ["h", 2, 500000], ["f", 1, 1700000]])
    );
    // The screen share: two layers, both at the screen's full size, the lower at 5 frames a
    // second and 200 kbit/s (slides stay sharp on a weak line; they change a little later).
    b.eval(&rita, "kursrelay.screenShare().then(() => true)")
        .await;
    let p = published(&mut b, &rita).await;
    let sdp = p["sdp"].as_str().unwrap();
    let videos = p["video"].as_array().unwrap();
    assert_eq!(videos.len(), 2, "{p}");
    assert_eq!(videos[1]["rids"], json!(["l", "h"]), "the screen: {p}");
    assert!(
        sdp.matches("a=simulcast:").count() == 2 && sdp.contains("a=simulcast:send l;h"),
        "{:?}",
        simulcast_lines(sdp)
    );
    // What the page says it sends (kursrelay.stats().senders): the layers asked for, and
    // once the encoder runs, each layer's size and frame rate. The browser's estimate of its
    // line starts at 300 kbit/s, which carries only the low layer: the top one follows as the
    // estimate grows (seconds on loopback, longer on a loaded machine).
    let screen = b
        .wait_for(
            &rita,
            "kursrelay.stats().then(s => { const v = s.senders.find(x => x.source === 'screen');                return v && v.encodings.length === 2 && v.encodings.every(e => e.frameHeight > 0 && e.framesEncoded > 20) ? v : null; })",
            60,
        )
        .await;
    let enc = screen["encodings"].as_array().unwrap();
    let asked: Vec<Value> = enc
        .iter()
        .map(|e| {
            json!([
                e["rid"],
                e["scaleResolutionDownBy"],
                e["maxFramerate"],
                e["maxBitrate"]
            ])
        })
        .collect();
    assert_eq!(
        asked,
        vec![json!(["l", 1, 5, 200000]), json!(["h", 1, 30, 1500000])],
        "{screen}"
    );
    let size = b
        .eval(
            &rita,
            "(() => { const s = kursrelay.client._conn.publish.pc.getSenders().find(s => s.track && s.track.label !== '' && s.track.contentHint === 'detail');                const st = s.track.getSettings(); return [st.width, st.height]; })()",
        )
        .await;
    for e in enc {
        assert_eq!(
            json!([e["frameWidth"], e["frameHeight"]]),
            size,
            "each screen layer at the screen's full size: {screen}"
        );
    }
    // The low layer keeps to its few frames a second (framesPerSecond is a one-second
    // window; Chromium may round up a frame).
    let low_fps = b
        .wait_for(
            &rita,
            "kursrelay.stats().then(s => { const e = s.senders.find(x => x.source === 'screen').encodings;                return e[0].framesPerSecond > 0 && e[1].framesPerSecond > e[0].framesPerSecond ? e[0].framesPerSecond : null; })",
            15,
        )
        .await;
    assert!(low_fps.as_f64().unwrap() <= 6.0, "{low_fps}");
    // A viewer at home gets the slides at full size (the server forwards one of the two).
    let kari_t = server
        .token("sim", Role::Participant, Some("Kari"), false)
        .await;
    let kari = b.open(&format!("{base}/course.html#t={kari_t}")).await;
    b.eval(&kari, "kursrelay.start({}).then(() => true)").await;
    let got = b
        .wait_for(
            &kari,
            &format!(
                "kursrelay.stats().then(s => s.inbound.find(v => v.kind === 'video' && v.frameHeight === {h} && v.framesDecoded > 10) || null)",
                h = size[1]
            ),
            30,
        )
        .await;
    eprintln!("the viewer's screen: {got}");
    // On a laptop the slides' label is a bar above the picture, not over the slide's title.
    b.viewport(&kari, 1366, 768, false).await;
    let boxes = b
        .wait_for(
            &kari,
            "(() => { const f = document.querySelector('#main-slot figure[data-pos=main][data-source=screen]');              if (!f) return null; const c = f.querySelector('figcaption').getBoundingClientRect();              const v = f.querySelector('video').getBoundingClientRect();              return c.height > 0 && v.height > 200 ? [c.top, c.bottom, v.top, v.bottom, c.left, v.left] : null; })()",
            10,
        )
        .await;
    let n = |i: usize| boxes[i].as_f64().unwrap();
    assert!(n(1) <= n(2) + 0.5, "label {boxes} over the slides");
    assert!(n(4) >= n(5), "label left of the picture: {boxes}");
    b.screenshot(&kari, "adapt-slides-label-laptop").await;
    no_violations(&mut b, &kari, "the slides with their label above them").await;
    b.viewport(&kari, 1920, 1080, false).await;
    settle().await;
    b.screenshot(&kari, "adapt-slides-label-1080p").await;
    b.viewport(&kari, 390, 844, true).await;
    settle().await;
    b.screenshot(&kari, "adapt-slides-label-phone").await;
    drop(b);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_line_at_home_and_the_hall_labels() {
    let server = TestServer::spawn().await;
    let base = format!("http://{}", server.addr);
    let leader_t = server
        .token("weak", Role::Leader, Some("Lise"), false)
        .await;
    // One long word in a name, as Norwegian compounds are.
    let rep_name = "Ragnhild Brukarrepresentantkoordinatoren";
    let rep_t = server
        .token("weak", Role::Representative, Some(rep_name), false)
        .await;
    let kari_t = server
        .token("weak", Role::Participant, Some("Kari"), false)
        .await;
    // With the interpreter beside the lecture, the hall's small pictures are narrow.
    let tolk_t = server
        .token("weak", Role::Interpreter, Some("Siri"), false)
        .await;
    let site_t = server
        .token("weak", Role::Site, Some("Volda sjukehus, møterom 2"), false)
        .await;
    let mut b = Chromium::launch().await;
    for t in [&leader_t, &rep_t, &tolk_t] {
        let p = b.open(&format!("{base}/course.html#t={t}")).await;
        b.eval(&p, "kursrelay.start({}).then(() => true)").await;
    }
    let kari = b.open_blank().await;
    b.viewport(&kari, 1366, 768, false).await;
    b.navigate(&kari, &format!("{base}/course.html#t={kari_t}"))
        .await;
    b.eval(&kari, "kursrelay.start({}).then(() => true)").await;
    b.wait_for(
        &kari,
        "kursrelay.stats().then(s => s.videoTracks >= 3 && s.framesDecoded > 30 && s.audioPacketsReceived > 20)",
        30,
    )
    .await;
    b.wait_for(
        &kari,
        "(document.querySelector('#main-slot figure[data-pos=main] video') || {}).videoWidth > 0",
        15,
    )
    .await;

    // After joining the page says how tall it shows video (device pixels, a step) and that
    // data is not to be saved. Today's server does not know the message: it answers
    // `unknown_type`, which the page takes quietly (no alert) and does not send again.
    b.wait_for(
        &kari,
        "kursrelay.sent().some(m => m.type === 'video_preference')",
        5,
    )
    .await;
    let first = preferences(&mut b, &kari).await[0].clone();
    let h = first["max_height"].as_u64().expect("max_height in pixels");
    assert!(
        [180, 360, 540, 720, 1080].contains(&h),
        "not a step: {first}"
    );
    assert_eq!(first["save_data"], false, "{first}");
    let server_knows = !b
        .try_wait_for(
            &kari,
            "kursrelay.client.unsupported.has('video_preference')",
            3,
        )
        .await;
    if !server_knows {
        assert!(b
            .eval(&kari, "kursrelay.messages().includes('error')")
            .await
            .as_bool()
            .unwrap());
    }
    assert_eq!(
        text_of(&mut b, &kari, "alert").await,
        "",
        "an error was shown"
    );

    // From a large window to a phone upright: one new preference for the smaller picture, a
    // second after the resizing settles, not one per resize. (Sent only to a server that
    // takes it: the page is told so here, as the server part will.)
    b.viewport(&kari, 1920, 1080, false).await;
    b.eval(&kari, "kursrelay.client.unsupported.clear(), true")
        .await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let sent = preferences(&mut b, &kari).await;
    let before = sent.len();
    let big = sent[before - 1]["max_height"].as_u64().unwrap();
    assert_eq!(
        Value::from(big),
        b.eval(&kari, "kursrelay.videoPreference().max_height")
            .await,
        "{sent:?}"
    );
    for w in [1600, 1300, 1000, 700] {
        b.viewport(&kari, w, 768, false).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    b.viewport(&kari, 390, 844, true).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = preferences(&mut b, &kari).await;
    assert_eq!(after.len(), before + 1, "{after:?}");
    let phone_h = after[before]["max_height"].as_u64().unwrap();
    assert!(
        phone_h < big,
        "a phone asks for less than a large window: {phone_h} after {big}"
    );
    assert_eq!(
        Value::from(phone_h),
        b.eval(&kari, "kursrelay.videoPreference().max_height")
            .await
    );
    b.viewport(&kari, 1366, 768, false).await;
    settle().await;

    // "Spar data" by keyboard alone: reached with Tab, pressed with Enter, said as pressed,
    // sent at once, and kept by the tab over a reload.
    b.eval(&kari, "document.getElementById('stage-heading').focus(), kursrelay.client.unsupported.clear(), true")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tab_to(&mut b, &kari, "save-data").await;
    // (Told again that the server takes it: it answered the laptop's size `unknown_type`.)
    b.eval(&kari, "kursrelay.client.unsupported.clear(), true")
        .await;
    let before = preferences(&mut b, &kari).await.len();
    b.key(&kari, "Enter").await;
    b.wait_for(
        &kari,
        "document.getElementById('save-data').getAttribute('aria-pressed') === 'true'",
        5,
    )
    .await;
    let after = preferences(&mut b, &kari).await;
    assert_eq!(after.len(), before + 1, "{after:?}");
    assert_eq!(after[before]["save_data"], true);
    assert_eq!(
        b.eval(
            &kari,
            "[document.getElementById('save-data').textContent, document.getElementById(document.getElementById('save-data').getAttribute('aria-describedby')).textContent]"
        )
        .await,
        json!([
            "Spar data",
            "Viser bildet i lavere kvalitet og bruker mindre data. Lyden blir like god."
        ])
    );
    let big = b
        .eval(
            &kari,
            "document.getElementById('save-data').getBoundingClientRect().height",
        )
        .await;
    assert!(big.as_f64().unwrap() >= 48.0, "save data is {big} px high");
    b.eval(
        &kari,
        "document.getElementById('save-data').scrollIntoView({block: 'center'}), true",
    )
    .await;
    b.screenshot(&kari, "adapt-save-data-laptop").await;
    for (w, h, phone, size) in [(390, 844, true, "phone"), (1920, 1080, false, "1080p")] {
        b.viewport(&kari, w, h, phone).await;
        settle().await;
        b.eval(
            &kari,
            "document.getElementById('data-settings').scrollIntoView({block: 'center'}), true",
        )
        .await;
        settle().await;
        in_view(
            &mut b,
            &kari,
            &["#save-data", "#save-data-help"],
            &format!("save data at {size}"),
        )
        .await;
        // Not hidden under anything either: a finger on its middle lands on it.
        let hit = b
            .eval(
                &kari,
                "(() => { const r = document.getElementById('save-data').getBoundingClientRect(); \
                 const e = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2); \
                 return Boolean(e && e.closest('#save-data')); })()",
            )
            .await;
        assert_eq!(hit, true, "{size}: the save data button is covered");
        b.screenshot(&kari, &format!("adapt-save-data-{size}"))
            .await;
    }
    b.viewport(&kari, 1366, 768, false).await;
    settle().await;
    no_violations(&mut b, &kari, "the participant with save data on").await;
    b.reload(&kari).await;
    state_is(&mut b, &kari, "joined").await;
    assert_eq!(
        b.eval(
            &kari,
            "document.getElementById('save-data').getAttribute('aria-pressed')"
        )
        .await,
        "true"
    );
    b.wait_for(
        &kari,
        "kursrelay.sent().some(m => m.type === 'video_preference' && m.save_data === true)",
        5,
    )
    .await;
    b.wait_for(
        &kari,
        "(document.querySelector('#main-slot figure[data-pos=main] video') || {}).videoWidth > 0",
        20,
    )
    .await;

    // stats(): per received video its frame rate, size, freezes and frames, per received
    // audio its concealment, and what the server last said of each video (full by default).
    let stats = b
        .wait_for(
            &kari,
            "kursrelay.stats().then(s => s.inbound.some(t => t.kind === 'video' && t.framesDecoded > 10 && t.frameWidth > 0) \
             && s.inbound.some(t => t.kind === 'audio' && t.totalSamplesReceived > 0) ? s : null)",
            20,
        )
        .await;
    for t in stats["inbound"].as_array().unwrap() {
        let keys: &[&str] = if t["kind"] == "video" {
            &[
                "framesPerSecond",
                "frameWidth",
                "frameHeight",
                "freezeCount",
                "totalFreezesDuration",
                "framesDecoded",
            ]
        } else {
            &[
                "concealedSamples",
                "totalSamplesReceived",
                "concealmentEvents",
            ]
        };
        for k in keys {
            assert!(t[k].is_number(), "{k} in {t}");
        }
        assert!(t["track_id"].is_string(), "{t}");
        if t["kind"] == "video" {
            assert_eq!(t["quality"], "full", "{t}");
        }
    }

    // The server pauses the main picture (a weak line): a calm notice over it, in the page's
    // language, said politely; never over the captions; on screen at every size.
    let main_id = b
        .eval(
            &kari,
            "document.querySelector('#main-slot figure[data-pos=main]').dataset.trackId",
        )
        .await;
    let main_id = main_id.as_str().unwrap().to_owned();
    from_server(
        &mut b,
        &kari,
        json!({"type": "video_quality", "track_id": main_id, "state": "paused"}),
    )
    .await;
    let note = "#main-slot figure[data-pos=main] .quality-note";
    // "Spar data" is still on from above: the notice does not blame the line alone.
    let saving_nb =
        "Bildet står på pause mens «Spar data» er på, eller fordi linjen er svak. Du får lyden.";
    b.wait_for(
        &kari,
        &format!(
            "document.getElementById('announce').textContent === {0} && document.querySelector('{note}').textContent === {0}",
            serde_json::to_string(saving_nb).unwrap()
        ),
        5,
    )
    .await;
    // Turned off again (a click this time): the notice says it is the line.
    b.click(&kari, "#save-data").await;
    let paused_nb = "Linjen din er for svak for bilde akkurat nå. Du får lyden. Bildet kommer tilbake av seg selv.";
    b.wait_for(
        &kari,
        &format!(
            "document.getElementById('save-data').getAttribute('aria-pressed') === 'false' && document.querySelector('{note}').textContent === {}",
            serde_json::to_string(paused_nb).unwrap()
        ),
        5,
    )
    .await;
    assert_eq!(
        b.eval(&kari, "sessionStorage.getItem('kursrelay.save_data')")
            .await,
        Value::Null
    );
    let q = b
        .eval(
            &kari,
            &format!("kursrelay.stats().then(s => s.inbound.find(t => t.track_id === '{main_id}').quality)"),
        )
        .await;
    assert_eq!(q, "paused");
    for (w, h, phone, size) in [
        (1920, 1080, false, "1080p"),
        (1366, 768, false, "laptop"),
        (390, 844, true, "phone"),
    ] {
        b.viewport(&kari, w, h, phone).await;
        settle().await;
        in_view(
            &mut b,
            &kari,
            &[note, "#captions"],
            &format!("paused at {size}"),
        )
        .await;
        assert_eq!(
            covers(&mut b, &kari, note, &LEAVE_FREE).await,
            json!([]),
            "{size}: the notice covers these"
        );
        let inside = b
            .eval(
                &kari,
                &format!("(() => {{ const n = document.querySelector('{note}'), f = n.closest('figure'); \
                 return n.scrollHeight <= n.clientHeight + 1 && f.contains(n) && (() => {{ const a = n.getBoundingClientRect(), c = f.getBoundingClientRect(); \
                 return a.left >= c.left - 1 && a.right <= c.right + 1 && a.top >= c.top - 1 && a.bottom <= c.bottom + 1; }})(); }})()"),
            )
            .await;
        assert_eq!(
            inside, true,
            "{size}: the notice is cut or outside its picture"
        );
        b.screenshot(&kari, &format!("adapt-paused-{size}")).await;
    }
    b.viewport(&kari, 1366, 768, false).await;
    settle().await;
    no_violations(&mut b, &kari, "the participant with the picture paused").await;
    set_lang(&mut b, &kari, "nn").await;
    assert_eq!(
        b.eval(&kari, &format!("document.querySelector('{note}').textContent"))
            .await,
        "Linja di er for svak for bilete akkurat no. Du får lyden. Biletet kjem tilbake av seg sjølv."
    );
    set_lang(&mut b, &kari, "en").await;
    assert_eq!(
        b.eval(&kari, &format!("document.querySelector('{note}').textContent"))
            .await,
        "Your connection is too weak for the picture right now. You still get the sound. The picture comes back by itself."
    );
    set_lang(&mut b, &kari, "nb").await;

    // "reduced": no notice, a quiet word in the picture's label; "full": nothing.
    from_server(
        &mut b,
        &kari,
        json!({"type": "video_quality", "track_id": main_id, "state": "reduced"}),
    )
    .await;
    b.wait_for(
        &kari,
        &format!("document.querySelector('{note}').hidden && document.querySelector('#main-slot figure[data-pos=main] figcaption .quality-hint') !== null"),
        5,
    )
    .await;
    b.wait_for(
        &kari,
        "document.getElementById('announce').textContent === 'Bildet er tilbake.'",
        5,
    )
    .await;
    b.screenshot(&kari, "adapt-reduced-laptop").await;
    no_violations(&mut b, &kari, "the participant with the picture reduced").await;
    from_server(
        &mut b,
        &kari,
        json!({"type": "video_quality", "track_id": main_id, "state": "full"}),
    )
    .await;
    b.wait_for(
        &kari,
        &format!("document.querySelector('{note}').hidden && !document.querySelector('.quality-hint') && !document.querySelector('figure[data-quality]')"),
        5,
    )
    .await;

    // A small picture paused (the representative's, in its row under the lecture beside the
    // interpreter, and on a phone): a short word on the picture, whole, not over the name
    // beside it; the full sentence in the video's label for screen readers.
    let rep_id = b
        .eval(
            &kari,
            "document.querySelector('#main-slot figure[data-pos=other]').dataset.trackId",
        )
        .await;
    let rep_id = rep_id.as_str().unwrap().to_owned();
    from_server(
        &mut b,
        &kari,
        json!({"type": "video_quality", "track_id": rep_id, "state": "paused"}),
    )
    .await;
    let small = "#main-slot figure[data-pos=other] .quality-note";
    for (w, h, phone, size) in [
        (1366, 768, false, "laptop"),
        (390, 844, true, "phone"),
        (844, 390, true, "phone-side"),
    ] {
        b.viewport(&kari, w, h, phone).await;
        settle().await;
        let shown = b
            .eval(
                &kari,
                &format!("(() => {{ const n = document.querySelector('{small}'), f = n.closest('figure'); \
                 const a = n.getBoundingClientRect(), c = f.querySelector('video').getBoundingClientRect(); \
                 return {{ text: n.textContent, hidden: n.hidden, tiny: n.classList.contains('tiny'), whole: n.scrollHeight <= n.clientHeight + 1 && n.scrollWidth <= n.clientWidth + 1, \
                   inside: a.left >= c.left - 1 && a.right <= c.right + 1 && a.top >= c.top - 1 && a.bottom <= c.bottom + 1, \
                   label: f.querySelector('video').getAttribute('aria-label') }}; }})()"),
            )
            .await;
        assert_eq!(shown["text"], "Bilde på pause", "{size}: {shown}");
        // On a phone on its side the representative is a thumbnail over the lecture: a
        // pause sign there.
        assert_eq!(
            shown["tiny"],
            size == "phone-side",
            "{size}: words in the representative's row, a sign in a thumbnail: {shown}"
        );
        assert_eq!(
            (&shown["hidden"], &shown["whole"], &shown["inside"]),
            (&json!(false), &json!(true), &json!(true)),
            "{size}: {shown}"
        );
        assert!(
            shown["label"]
                .as_str()
                .unwrap()
                .ends_with("Bildet står på pause (svak linje). Du får lyden."),
            "{shown}"
        );
        b.screenshot(&kari, &format!("adapt-paused-small-{size}"))
            .await;
    }
    from_server(
        &mut b,
        &kari,
        json!({"type": "video_quality", "track_id": rep_id, "state": "full"}),
    )
    .await;
    b.viewport(&kari, 1366, 768, false).await;

    // The hall screen: always the best picture (max_height null, no save data); the
    // representative's label, one long word in it, wraps only between words and stays inside
    // its tile at 1366×768, the whole name in its text and title.
    let site = b.open_blank().await;
    b.viewport(&site, 1366, 768, false).await;
    b.navigate(&site, &format!("{base}/course.html#t={site_t}"))
        .await;
    state_is(&mut b, &site, "joined").await;
    b.wait_for(
        &site,
        "(document.querySelector('#main-slot figure[data-pos=other] video') || {}).videoWidth > 0",
        30,
    )
    .await;
    b.wait_for(
        &site,
        "kursrelay.sent().some(m => m.type === 'video_preference')",
        5,
    )
    .await;
    let kiosk_pref = preferences(&mut b, &site).await[0].clone();
    assert_eq!(
        kiosk_pref,
        json!({"type": "video_preference", "max_height": null, "save_data": false})
    );
    settle().await;
    let label = b
        .eval(
            &site,
            "(() => { const f = document.querySelector('#main-slot figure[data-pos=other]'), c = f.querySelector('figcaption'); \
             const fr = f.getBoundingClientRect(), cr = c.getBoundingClientRect(); \
             const long = [...c.querySelectorAll('.w')].find(w => w.textContent.startsWith('Brukar')); \
             const lr = long.getBoundingClientRect(); const cs = getComputedStyle(long); \
             return { text: c.textContent, title: c.title, label: f.querySelector('video').getAttribute('aria-label'), \
               inside: cr.left >= fr.left - 1 && cr.right <= fr.right + 1 && cr.top >= fr.top - 1 && cr.bottom <= fr.bottom + 1, \
               wordInside: lr.left >= cr.left - 1 && lr.right <= cr.right + 1, \
               oneLine: lr.height < parseFloat(cs.lineHeight) * 1.5, hyphens: cs.hyphens, lang: document.documentElement.lang, \
               cut: long.scrollWidth > long.clientWidth + 1, lines: lr.height / parseFloat(cs.lineHeight), noOverflow: c.scrollWidth <= c.clientWidth + 1, \
               wrap: getComputedStyle(c).overflowWrap, wordBreak: getComputedStyle(c).wordBreak, w: fr.width }; })()",
        )
        .await;
    assert!(
        label["text"].as_str().unwrap().contains(rep_name)
            && label["title"].as_str().unwrap().contains(rep_name)
            && label["label"].as_str().unwrap().contains(rep_name),
        "{label}"
    );
    assert_eq!(label["inside"], true, "the label leaves its tile: {label}");
    assert_eq!(label["wordInside"], true, "{label}");
    assert_eq!(label["noOverflow"], true, "{label}");
    assert_eq!(
        (&label["wrap"], &label["wordBreak"]),
        (&json!("normal"), &json!("normal")),
        "{label}"
    );
    // Not broken mid-word: either on one line, ended with "…" inside the tile, or
    // hyphenated by the browser in the page's language. (The word is the hard case: wider
    // than the label can be, or hyphenated over lines.)
    assert!(
        (label["oneLine"] == true && label["cut"] == true)
            || (label["hyphens"] == "auto" && label["lang"] == "nb" && label["oneLine"] == false),
        "{label}"
    );
    b.screenshot(&site, "adapt-hall-long-name-laptop").await;
    b.viewport(&site, 1920, 1080, false).await;
    settle().await;
    b.screenshot(&site, "adapt-hall-long-name-1080p").await;

    // The hall screen with its main picture paused: the notice is large, on screen, and
    // leaves the caption band free.
    from_server(
        &mut b,
        &site,
        json!({"type": "video_quality", "track_id": main_id, "state": "paused"}),
    )
    .await;
    // Said to the room, not to one person.
    b.wait_for(
        &site,
        &format!("document.querySelector('{note}').textContent === 'Linjen hit er for svak for bilde akkurat nå. Dere får lyden. Bildet kommer tilbake av seg selv.'"),
        5,
    )
    .await;
    // The "press for sound" band shown as a browser that refuses sound would show it.
    b.eval(
        &site,
        "document.getElementById('sound-big').hidden = false, true",
    )
    .await;
    for (w, h, phone, size) in [
        (1920, 1080, false, "1080p"),
        (1366, 768, false, "laptop"),
        (390, 844, true, "phone"),
    ] {
        b.viewport(&site, w, h, phone).await;
        settle().await;
        in_view(
            &mut b,
            &site,
            &[note, "#captions", "#sound-big"],
            &format!("hall paused at {size}"),
        )
        .await;
        // (A hall screen the size of a phone shows a small picture: its notice is short and
        // may cover that picture's own label, never the captions or the band.)
        let free: &[&str] = if phone { &LEAVE_FREE[..2] } else { &LEAVE_FREE };
        assert_eq!(
            covers(&mut b, &site, note, free).await,
            json!([]),
            "{size}: the notice covers these"
        );
        let whole = b
            .eval(
                &site,
                &format!("(() => {{ const n = document.querySelector('{note}'); return n.scrollHeight <= n.clientHeight + 1; }})()"),
            )
            .await;
        assert_eq!(whole, true, "{size}: the hall's notice is cut");
        b.screenshot(&site, &format!("adapt-hall-paused-{size}"))
            .await;
    }
    no_violations(&mut b, &site, "the hall screen with the picture paused").await;
    drop(b);
    server.shutdown().await;
}

//! What must fit on a screen, in headless Chromium through the real server: on a phone,
//! upright (390×844) and on its side (844×390), the participant's "Forlat kurset" and the
//! other controls under the picture are whole on screen and never under the help line at the
//! foot of the page; on a laptop (1366×768) the leader's lock, attendance list and end are in
//! view, clear of the help line too; on the hall screen (1920×1080) the person who has the
//! floor is large and the user representative readable, with the slides, the interpreter and
//! every label whole and uncovered.
//! Screenshots go to target/screenshots/ (not committed).

mod common;

use std::time::Duration;

use common::chromium::{Chromium, Page};
use common::*;
use kursrelay::protocol::Role;
use serde_json::{json, Value};

/// A caption of 120 characters, as an interpreter writes them.
const LONG: &str = "Husk å ta stoffskiftemedisinen om morgenen, en halv time før frokost. Ta den på samme måte hver dag, og spør oss gjerne.";

/// Lets a viewport change, a resize observer and the fonts settle (the layout has no
/// transitions; half a second is plenty on a busy machine).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn state_is(b: &mut Chromium, page: &Page, state: &str) {
    b.wait_for(page, &format!("kursrelay.state() === '{state}'"), 20)
        .await;
}

async fn set_lang(b: &mut Chromium, page: &Page, lang: &str) {
    b.eval(
        page,
        &format!("(() => {{ const s = document.getElementById('lang'); s.value = '{lang}'; s.dispatchEvent(new Event('change')); return true; }})()"),
    )
    .await;
}

/// For each selector: its element is shown, its whole box inside the viewport, it does not
/// intersect the help line's box, and it is what the screen shows at its centre and just
/// inside its four corners (not clipped by a scroll area, not under another element).
/// Returns what is wrong, one line each (empty = all fine).
async fn uncovered(b: &mut Chromium, page: &Page, selectors: &[&str]) -> Vec<String> {
    let js = format!(
        "(() => {{ const bad = []; \
         const f = document.querySelector('footer.help'); \
         const fr = f && getComputedStyle(f).display !== 'none' ? f.getBoundingClientRect() : null; \
         const box = (r) => `${{Math.round(r.left)}},${{Math.round(r.top)}}–${{Math.round(r.right)}},${{Math.round(r.bottom)}}`; \
         for (const sel of {sels}) {{ const e = document.querySelector(sel); \
           if (!e || e.closest('[hidden]') || e.offsetParent === null) {{ bad.push(sel + ': not shown'); continue; }} \
           const r = e.getBoundingClientRect(); \
           if (r.width < 1 || r.height < 1) {{ bad.push(sel + ': empty box'); continue; }} \
           if (r.left < -0.5 || r.top < -0.5 || r.right > innerWidth + 0.5 || r.bottom > innerHeight + 0.5) \
             bad.push(`${{sel}}: ${{box(r)}} outside ${{innerWidth}}×${{innerHeight}}`); \
           if (fr && !f.contains(e) && r.bottom > fr.top + 0.5 && r.top < fr.bottom - 0.5 && r.right > fr.left && r.left < fr.right) \
             bad.push(`${{sel}}: ${{box(r)}} under the help line ${{box(fr)}}`); \
           const pts = [[0.5, 0.5], [0.1, 0.15], [0.9, 0.15], [0.1, 0.85], [0.9, 0.85]]; \
           for (const [px, py] of pts) {{ const x = r.left + r.width * px, y = r.top + r.height * py; \
             const at = document.elementFromPoint(x, y); \
             if (!at || !(at === e || e.contains(at))) {{ \
               bad.push(`${{sel}}: at ${{Math.round(x)}},${{Math.round(y)}} the screen shows ${{at ? at.tagName + (at.id ? '#' + at.id : '') + (at.className ? '.' + at.className : '') : 'nothing'}}`); break; }} }} }} \
         if (document.documentElement.scrollWidth > innerWidth + 1) bad.push('the page scrolls sideways'); \
         return bad; }})()",
        sels = serde_json::to_string(selectors).unwrap()
    );
    let v = b.eval(page, &js).await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The element's box: {x, y, w, h}.
async fn rect(b: &mut Chromium, page: &Page, selector: &str) -> Value {
    let js = format!(
        "(() => {{ const e = document.querySelector({sel}); if (!e) return null; const r = e.getBoundingClientRect(); \
         return {{x: r.x, y: r.y, w: r.width, h: r.height}}; }})()",
        sel = serde_json::to_string(selector).unwrap()
    );
    let r = b.eval(page, &js).await;
    assert!(!r.is_null(), "no {selector}");
    r
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leave_button_clear_of_the_help_line() {
    let server = TestServer::spawn_with("[web]\nhelp_phone = \"71 12 00 00\"\n").await;
    let base = format!("http://{}", server.addr);
    let leader_t = server.token("fit", Role::Leader, Some("Lise"), false).await;
    let tolk_t = server
        .token("fit", Role::Interpreter, Some("Siri"), false)
        .await;
    let kari_t = server
        .token("fit", Role::Participant, Some("Kari"), false)
        .await;
    let mut b = Chromium::launch().await;
    let leader = b.open(&format!("{base}/course.html#t={leader_t}")).await;
    b.viewport(&leader, 1366, 768, false).await;
    b.eval(&leader, "kursrelay.start({}).then(() => true)")
        .await;
    let tolk = b.open(&format!("{base}/course.html#t={tolk_t}")).await;
    b.eval(&tolk, "kursrelay.start({}).then(() => true)").await;
    let kari = b.open_blank().await;
    b.viewport(&kari, 390, 844, true).await;
    b.navigate(&kari, &format!("{base}/course.html#t={kari_t}"))
        .await;
    b.eval(&kari, "kursrelay.start({}).then(() => true)").await;
    state_is(&mut b, &kari, "joined").await;
    b.wait_for(
        &kari,
        "(document.querySelector('#main-slot figure[data-pos=main] video') || {}).videoWidth > 0 \
         && document.querySelector('footer.help a.help-phone') !== null",
        30,
    )
    .await;
    // The busiest a participant's page gets: the interpreter on screen (as large as the
    // slides, the default), a whole sentence of captions and the hand up with its place in
    // the queue.
    b.wait_for(
        &kari,
        "!document.getElementById('interp-slot').hidden && (document.querySelector('#interp-slot video') || {}).videoWidth > 0",
        20,
    )
    .await;
    b.eval(
        &tolk,
        &format!(
            "kursrelay.sendCaption({}).then(() => true)",
            serde_json::to_string(LONG).unwrap()
        ),
    )
    .await;
    b.wait_for(
        &kari,
        &format!(
            "kursrelay.captions().includes({})",
            serde_json::to_string(LONG).unwrap()
        ),
        10,
    )
    .await;
    b.eval(&kari, "kursrelay.raiseHand().then(() => true)")
        .await;
    b.wait_for(&kari, "!document.getElementById('hand-place').hidden", 10)
        .await;

    // As the page comes, without scrolling: the leave button (and the hand) whole on screen
    // and not under the help line, upright and on its side.
    let mut wrong = Vec::new();
    for (lang, w, h) in [
        ("nb", 390, 844),
        ("nb", 844, 390),
        ("en", 390, 844),
        ("nn", 390, 844),
    ] {
        set_lang(&mut b, &kari, lang).await;
        b.viewport(&kari, w, h, true).await;
        b.eval(
            &kari,
            "scrollTo(0, 0); document.getElementById('stage').scrollTop = 0; true",
        )
        .await;
        settle().await;
        b.screenshot(&kari, &format!("fit-participant-{w}x{h}-{lang}"))
            .await;
        for bad in uncovered(
            &mut b,
            &kari,
            &["#leave", "#hand", "#captions", "footer.help a.help-phone"],
        )
        .await
        {
            wrong.push(format!("{lang} {w}×{h}: {bad}"));
        }
        let layout = b
            .eval(
                &kari,
                "JSON.stringify(['header.top', '#status', '#view', '#bar', '#side', '#stage', 'footer.help'].map(s => { const r = document.querySelector(s).getBoundingClientRect(); return s + ' ' + Math.round(r.top) + '-' + Math.round(r.bottom); }))",
            )
            .await;
        eprintln!("{lang} {w}×{h}: {layout}");
    }
    set_lang(&mut b, &kari, "nb").await;

    // The leader's lock, attendance list and end on a laptop: on screen, clear of the help line.
    b.eval(
        &leader,
        "document.getElementById('side').scrollTop = 0; true",
    )
    .await;
    settle().await;
    for bad in uncovered(&mut b, &leader, &["#lock", "#csv", "#end", "#leave"]).await {
        wrong.push(format!("leader at 1366×768: {bad}"));
    }
    b.screenshot(&leader, "fit-leader-laptop").await;
    assert!(
        wrong.is_empty(),
        "covered or off screen:\n{}",
        wrong.join("\n")
    );
    drop(b);
    server.shutdown().await;
}

/// Every picture on the page: where its figure is, the size its video paints (object-fit
/// contain), whether its label is whole, and what covers it.
async fn pictures(b: &mut Chromium, page: &Page) -> Value {
    b.eval(
        page,
        "[...document.querySelectorAll('#media figure[data-track-id]')].map((fig) => { \
           const v = fig.querySelector('video'); const r = v.getBoundingClientRect(); \
           const s = v.videoWidth ? Math.min(r.width / v.videoWidth, r.height / v.videoHeight) : 0; \
           const pw = v.videoWidth * s, ph = v.videoHeight * s; \
           const px = r.left + (r.width - pw) / 2, py = r.top + (r.height - ph) / 2; \
           const c = fig.querySelector('figcaption'); const cr = c.getBoundingClientRect(); \
           const cut = [...c.querySelectorAll('.w')].some((w) => w.scrollWidth > w.clientWidth + 1) \
             || c.scrollWidth > c.clientWidth + 1 || c.scrollHeight > c.clientHeight + 1 \
             || cr.right > innerWidth + 0.5 || cr.bottom > innerHeight + 0.5 || cr.width < 1; \
           const covered = []; \
           for (let i = 1; i < 10; i += 2) for (let j = 1; j < 10; j += 2) { \
             const at = document.elementFromPoint(px + pw * i / 10, py + ph * j / 10); \
             if (!at || !fig.contains(at)) covered.push(at ? (at.closest('figure') || at).dataset.pos || at.id || at.tagName : 'nothing'); } \
           return { pos: fig.dataset.pos, floor: Boolean(fig.dataset.floor), source: fig.dataset.source, member: fig.dataset.memberId, \
                    label: c.textContent, labelPx: parseFloat(getComputedStyle(c).fontSize), cut, covered, \
                    x: Math.round(px), y: Math.round(py), w: Math.round(pw), h: Math.round(ph), shown: getComputedStyle(fig).display !== 'none' }; })",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_in_the_hall() {
    let server = TestServer::spawn().await;
    let base = format!("http://{}", server.addr);
    let leader_t = server
        .token("hallfloor", Role::Leader, Some("Lise"), false)
        .await;
    let tolk_t = server
        .token("hallfloor", Role::Interpreter, Some("Siri"), false)
        .await;
    let rep_t = server
        .token(
            "hallfloor",
            Role::Representative,
            Some("Rita Brukerrepresentant"),
            false,
        )
        .await;
    let kari_t = server
        .token("hallfloor", Role::Participant, Some("Kari Nordmann"), false)
        .await;
    let site_t = server
        .token(
            "hallfloor",
            Role::Site,
            Some("Volda sjukehus, møterom 2"),
            false,
        )
        .await;
    let mut b = Chromium::launch().await;
    let mut ids = Vec::new();
    for t in [&leader_t, &tolk_t, &rep_t, &kari_t] {
        let p = b.open(&format!("{base}/course.html#t={t}")).await;
        b.eval(&p, "kursrelay.start({}).then(() => true)").await;
        let id = b.eval(&p, "kursrelay.memberId()").await;
        ids.push((p, id.as_str().unwrap().to_owned()));
    }
    let [(leader, _), _, _, (kari, kari_id)] = <[(Page, String); 4]>::try_from(ids).ok().unwrap();
    // The slides: the leader shares a screen.
    b.eval(&leader, "kursrelay.screenShare().then(() => true)")
        .await;
    let site = b.open_blank().await;
    b.viewport(&site, 1920, 1080, false).await;
    b.navigate(&site, &format!("{base}/course.html#t={site_t}"))
        .await;
    state_is(&mut b, &site, "joined").await;
    b.wait_for(
        &site,
        "[...document.querySelectorAll('#media figure[data-track-id] video')].filter(v => v.videoWidth > 0).length >= 4",
        30,
    )
    .await;
    settle().await;
    let before = pictures(&mut b, &site).await;
    eprintln!("before: {before:#}");
    b.screenshot(&site, "fit-hall-before-floor").await;
    b.eval(
        &leader,
        &format!("kursrelay.grantFloor('{kari_id}').then(() => true)"),
    )
    .await;
    b.wait_for(&kari, "kursrelay.messages().includes('floor')", 10)
        .await;
    b.eval(&kari, "kursrelay.publishFloor().then(() => true)")
        .await;
    b.wait_for(
        &site,
        &format!("(document.querySelector('#media figure[data-floor][data-member-id=\"{kari_id}\"] video') || {{}}).videoWidth > 0"),
        20,
    )
    .await;
    let stage_w = f(&rect(&mut b, &site, "#media").await, "w");
    let pick = |all: &Value, pos: &str| -> Value {
        all.as_array()
            .unwrap()
            .iter()
            .find(|p| p["pos"] == pos)
            .cloned()
            .unwrap_or_else(|| panic!("no {pos} picture in {all:#}"))
    };
    let (slides_before, interp_before) = (pick(&before, "main"), pick(&before, "interp"));
    assert_eq!(slides_before["source"], "screen", "{before:#}");
    for (w, h) in [(1366, 768), (1920, 1080)] {
        b.viewport(&site, w, h, false).await;
        settle().await;
        b.screenshot(&site, &format!("fit-hall-floor-{w}x{h}"))
            .await;
        let during = pictures(&mut b, &site).await;
        let shown: Vec<&Value> = during
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["shown"] == true)
            .collect();
        // Every picture shown: whole on screen, nothing over it, its label whole; no two
        // pictures overlap.
        for p in &shown {
            assert_eq!(p["covered"], json!([]), "{w}×{h}: {p} is covered");
            assert_eq!(p["cut"], false, "{w}×{h}: {p}'s label is cut");
            assert!(
                f(p, "x") >= 0.0
                    && f(p, "y") >= 0.0
                    && f(p, "x") + f(p, "w") <= f64::from(w) + 1.0
                    && f(p, "y") + f(p, "h") <= f64::from(h) + 1.0,
                "{w}×{h}: {p} is off screen"
            );
            for q in &shown {
                if p["pos"] == q["pos"] {
                    continue;
                }
                let apart = f(p, "x") + f(p, "w") <= f(q, "x") + 1.0
                    || f(q, "x") + f(q, "w") <= f(p, "x") + 1.0
                    || f(p, "y") + f(p, "h") <= f(q, "y") + 1.0
                    || f(q, "y") + f(q, "h") <= f(p, "y") + 1.0;
                assert!(apart, "{w}×{h}: {p} and {q} overlap");
            }
        }
        if w != 1920 {
            continue;
        }
        let during_stage_w = f(&rect(&mut b, &site, "#media").await, "w");
        assert!((during_stage_w - stage_w).abs() < 1.0);
        // The person with the floor: at least a quarter of the picture area's width, labelled
        // "Har ordet: …" in letters for the back of the hall.
        let floor = pick(&during, "floor");
        assert_eq!(floor["member"], kari_id.as_str(), "{during:#}");
        assert!(
            f(&floor, "w") >= stage_w / 4.0,
            "the person with the floor is {floor} on a {stage_w} wide picture area"
        );
        assert_eq!(floor["label"], "Har ordet: Kari Nordmann");
        assert!(f(&floor, "labelPx") >= 32.0, "{floor}");
        // The representative: shown, a picture to recognise a face in from four metres (the
        // issue measured 197×113), the name whole in letters of at least 24 px.
        let rep = pick(&during, "other");
        assert!(
            rep["label"]
                .as_str()
                .unwrap()
                .contains("Rita Brukerrepresentant"),
            "{rep}"
        );
        assert!(
            f(&rep, "w") >= stage_w / 6.0 && f(&rep, "h") >= 200.0,
            "the representative is {rep} on a {stage_w} wide picture area"
        );
        assert!(f(&rep, "labelPx") >= 24.0, "{rep}");
        // The slides and the interpreter keep their size.
        let (slides, interp) = (pick(&during, "main"), pick(&during, "interp"));
        assert_eq!(slides["source"], "screen", "{during:#}");
        assert!(
            f(&slides, "w") >= 0.97 * f(&slides_before, "w"),
            "the slides went from {slides_before} to {slides}"
        );
        assert!(
            f(&interp, "w") >= 0.97 * f(&interp_before, "w"),
            "the interpreter went from {interp_before} to {interp}"
        );
    }
    // The floor taken back: the lecturer's camera is back, the row gone.
    b.eval(
        &leader,
        &format!("kursrelay.revokeFloor('{kari_id}').then(() => true)"),
    )
    .await;
    b.wait_for(
        &site,
        "!document.querySelector('#media figure[data-pos=floor]') && !document.getElementById('media').classList.contains('floor-row')          && document.querySelectorAll('#media figure[data-track-id]:not([data-pos=extra])').length === 4",
        15,
    )
    .await;
    drop(b);
    server.shutdown().await;
}

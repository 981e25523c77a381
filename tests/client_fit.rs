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

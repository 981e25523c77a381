//! A small DevTools-protocol driver for Debian's headless `chromium`, over the WebSocket
//! client the tests already use (no Node, no extra browser download). Chromium gets a fake
//! camera and microphone and is allowed to use loopback for WebRTC.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::wait::Patience;

/// The longest pause between two polls of a page (an `eval` costs the tab some work).
const EVAL_PAUSE: Duration = Duration::from_millis(200);
/// The same while a page loads (`try_eval` of a cheap expression).
pub const TRY_PAUSE: Duration = Duration::from_millis(100);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where the browser is: `KURSRELAY_CHROMIUM`, else Debian's `chromium` (installed if missing,
/// see `tools`).
pub fn chromium_path() -> PathBuf {
    super::tools::chromium()
}

/// Counts the page's calls to getUserMedia (runs before the page's own scripts).
const GUM_COUNTER: &str = "window.__gumCalls = 0; \
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) { \
      const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices); \
      navigator.mediaDevices.getUserMedia = (c) => { window.__gumCalls += 1; return real(c); }; }";

/// Keeps every RTCPeerConnection a page makes in `window.__pcs` (runs before the page's own
/// scripts), so a test can read the getStats that `kursrelay.stats()` does not sum (audio
/// concealment, frame sizes, the encoder's side).
const PC_TRACKER: &str = "window.__pcs = []; \
    if (window.RTCPeerConnection) { const Real = window.RTCPeerConnection; \
      window.RTCPeerConnection = class extends Real { \
        constructor(...a) { super(...a); window.__pcs.push(this); } }; }";

pub struct Chromium {
    child: Child,
    ws: Ws,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// One tab, attached with its own DevTools session.
#[derive(Clone)]
pub struct Page {
    session: String,
}

impl Page {
    /// The DevTools session id, for `Chromium::call`.
    pub fn session(&self) -> &str {
        &self.session
    }
}

impl Chromium {
    pub async fn launch() -> Chromium {
        Self::launch_with(&["--autoplay-policy=no-user-gesture-required".to_owned()]).await
    }

    /// With `wav` as the fake microphone (Chromium loops it) and the default autoplay rule.
    pub async fn launch_with_microphone(wav: &std::path::Path) -> Chromium {
        Self::launch_with(&[
            "--autoplay-policy=no-user-gesture-required".to_owned(),
            format!("--use-file-for-fake-audio-capture={}", wav.display()),
        ])
        .await
    }

    /// With other command-line switches instead of the default autoplay rule: e.g. the
    /// browser's own autoplay rule (`--autoplay-policy=document-user-activation-required`), a
    /// host name mapped to loopback (`--host-resolver-rules=MAP kurs.test 127.0.0.1`, which
    /// browsers treat as an insecure origin), or a trusted test CA.
    pub async fn launch_with(extra: &[String]) -> Chromium {
        Self::launch_with_prefs(extra, None).await
    }

    /// With extra switches and the profile's preferences preset (the `Default/Preferences`
    /// JSON a user's settings live in), e.g. a WebRTC IP-handling policy.
    pub async fn launch_with_prefs(extra: &[String], prefs: Option<Value>) -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        if let Some(prefs) = prefs {
            let dir = profile.path().join("Default");
            std::fs::create_dir_all(&dir).expect("profile Default dir");
            std::fs::write(dir.join("Preferences"), prefs.to_string()).expect("write Preferences");
        }
        let child = Command::new(chromium_path())
            // .ci/test runs some tests with the wall clock moved a year ahead by libfaketime;
            // Chromium does not start under it, and the browser's clock is not what those
            // runs test (the server's is), so it keeps the real one.
            .env_remove("LD_PRELOAD")
            .env_remove("FAKETIME")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--remote-debugging-port=0",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let text = super::wait::eventually_some(
            "chromium opening its DevTools port",
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&port_file)
                    .ok()
                    .filter(|t| t.lines().count() >= 2)
            },
        )
        .await;
        let mut lines = text.lines();
        let port = lines.next().unwrap().trim();
        let path = lines.next().unwrap().trim();
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("connect to chromium");
        Chromium {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .await
            .unwrap_or_else(|err| panic!("devtools {method} failed: {err}"))
    }

    /// Like `call`, but a DevTools error is returned, not a panic.
    pub async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("devtools send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("devtools {method} timed out"))
                .expect("devtools closed")
                .expect("devtools read");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("devtools JSON");
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    return Err(err.clone());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Opens `url` in a new tab and waits for the page's module. Every page counts its calls to
    /// `getUserMedia` in `window.__gumCalls` (set up before any of its own script runs), so a
    /// test can tell whether the camera was asked for.
    pub async fn open(&mut self, url: &str) -> Page {
        let page = self.open_blank().await;
        self.navigate(&page, url).await;
        page
    }

    /// A new, empty tab with the getUserMedia counter installed for every page it loads.
    pub async fn open_blank(&mut self) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        };
        self.call(Some(&page.session), "Page.enable", json!({}))
            .await;
        self.call(
            Some(&page.session),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": GUM_COUNTER}),
        )
        .await;
        page
    }

    /// Opens `url` in a new tab whose peer connections `peer_stats` can read.
    pub async fn open_tracked(&mut self, url: &str) -> Page {
        let page = self.open_blank().await;
        self.call(
            Some(&page.session),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": PC_TRACKER}),
        )
        .await;
        self.navigate(&page, url).await;
        page
    }

    /// Every stats object of every open peer connection of a tab opened with `open_tracked`,
    /// each with `pc` (the connection's index) added.
    pub async fn peer_stats(&mut self, page: &Page) -> Vec<Value> {
        let v = self
            .eval(
                page,
                "Promise.all((window.__pcs || []).map(async (pc, i) => { \
                   if (pc.connectionState === 'closed') return []; \
                   const out = []; (await pc.getStats()).forEach((s) => out.push({ ...s, pc: i })); \
                   return out; })).then((l) => l.flat())",
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Closes a tab.
    pub async fn close_tab(&mut self, page: &Page) {
        let _ = self
            .try_call(Some(&page.session), "Page.close", json!({}))
            .await;
    }

    /// Loads `url` in `page` and waits until the page's module has run.
    pub async fn navigate(&mut self, page: &Page, url: &str) {
        self.call(Some(&page.session), "Page.navigate", json!({"url": url}))
            .await;
        self.wait_loaded(page, url).await;
    }

    /// Reloads the page, as the browser's reload button does, and waits for its module.
    pub async fn reload(&mut self, page: &Page) {
        self.eval(page, "window.__reloading = true").await;
        self.call(Some(&page.session), "Page.reload", json!({}))
            .await;
        let mut patience =
            Patience::new("the page reloading", Duration::from_secs(30)).at_most_every(TRY_PAUSE);
        while self.try_eval(page, "window.__reloading === true").await != Some(Value::from(false)) {
            patience.pause().await;
        }
        self.wait_loaded(page, "the reloaded page").await;
    }

    async fn wait_loaded(&mut self, page: &Page, url: &str) {
        let mut patience = Patience::new(
            format!("{url} loading window.kursrelay"),
            Duration::from_secs(30),
        )
        .at_most_every(TRY_PAUSE);
        while self
            .try_eval(
                page,
                "location.href !== 'about:blank' && typeof window.kursrelay",
            )
            .await
            != Some(Value::from("object"))
        {
            patience.pause().await;
        }
    }

    /// Evaluates `expr` in the page, awaiting a promise, and returns its JSON value.
    pub async fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page threw evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Like `eval`, but None when the page threw (or is between two documents).
    pub async fn try_eval(&mut self, page: &Page, expr: &str) -> Option<Value> {
        let r = self
            .try_call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await
            .ok()?;
        if r.get("exceptionDetails").is_some() {
            return None;
        }
        Some(r["result"]["value"].clone())
    }

    /// Clicks the centre of the first element matching `selector` with real mouse events.
    pub async fn click(&mut self, page: &Page, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            sel = serde_json::to_string(selector).expect("selector")
        );
        let at = self.eval(page, &js).await;
        let (x, y) = (
            at[0]
                .as_f64()
                .unwrap_or_else(|| panic!("nothing matches {selector}")),
            at[1].as_f64().unwrap(),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                Some(&page.session),
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Clicks the first visible button whose text contains `text` (as a person would find it).
    pub async fn click_button(&mut self, page: &Page, text: &str) {
        let js = format!(
            "(() => {{ const b = [...document.querySelectorAll('button')].find(b => b.offsetParent !== null && b.textContent.includes({t})); \
             if (!b) return false; document.querySelectorAll('[data-test-click]').forEach(e => e.removeAttribute('data-test-click')); \
             b.setAttribute('data-test-click', ''); return true; }})()",
            t = serde_json::to_string(text).expect("text")
        );
        assert_eq!(
            self.eval(page, &js).await,
            true,
            "no visible button with {text:?}"
        );
        self.click(page, "[data-test-click]").await;
    }

    /// Polls `expr` (a JS expression) until it is truthy; panics after `secs` seconds.
    pub async fn wait_for(&mut self, page: &Page, expr: &str, secs: u64) -> Value {
        let mut patience = Patience::new(expr, Duration::from_secs(secs)).at_most_every(EVAL_PAUSE);
        loop {
            let v = self.eval(page, expr).await;
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            assert!(
                patience.try_pause().await,
                "timed out after {secs} s waiting for {expr}; last {v}"
            );
        }
    }

    /// Polls `expr` until it is truthy; false after `secs` seconds.
    pub async fn try_wait_for(&mut self, page: &Page, expr: &str, secs: u64) -> bool {
        let mut patience = Patience::new(expr, Duration::from_secs(secs)).at_most_every(EVAL_PAUSE);
        loop {
            let v = self.eval(page, expr).await;
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return true;
            }
            if !patience.try_pause().await {
                return false;
            }
        }
    }

    /// Presses a key (e.g. "Tab", "Enter", " ") as the keyboard would.
    pub async fn key(&mut self, page: &Page, key: &str) {
        let (code, vk, text) = match key {
            "Tab" => ("Tab", 9, ""),
            "Enter" => ("Enter", 13, "\r"),
            "Escape" => ("Escape", 27, ""),
            " " => ("Space", 32, " "),
            "k" => ("KeyK", 75, "k"),
            "h" => ("KeyH", 72, "h"),
            "+" => ("Equal", 187, "+"),
            other => panic!("no key mapping for {other}"),
        };
        self.call(
            Some(&page.session),
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk, "text": text}),
        )
        .await;
        self.call(
            Some(&page.session),
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk}),
        )
        .await;
    }

    /// Emulates a phone-sized screen (390 × 844, touch) or switches back.
    pub async fn phone(&mut self, page: &Page, on: bool) {
        if on {
            self.call(
                Some(&page.session),
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
            )
            .await;
        } else {
            self.call(
                Some(&page.session),
                "Emulation.clearDeviceMetricsOverride",
                json!({}),
            )
            .await;
        }
    }

    /// Emulates a screen of `width` × `height` CSS pixels (a phone when `mobile`).
    pub async fn viewport(&mut self, page: &Page, width: u32, height: u32, mobile: bool) {
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Types `text` into the focused element, as a keyboard would.
    pub async fn type_text(&mut self, page: &Page, text: &str) {
        self.call(
            Some(&page.session),
            "Input.insertText",
            json!({"text": text}),
        )
        .await;
    }

    /// Runs axe-core's WCAG 2.1 A/AA rules on the page; returns the violations (empty = pass).
    pub async fn axe(&mut self, page: &Page) -> Vec<Value> {
        // Vendored with its licence (tests/vendor/axe-core/README.md): no npm needed.
        let path = super::repo_root().join("tests/vendor/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read axe-core at {}: {e}", path.display()));
        self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": source}),
        )
        .await;
        let result = self
            .eval(
                page,
                "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})\
                 .then(r => r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})))",
            )
            .await;
        result.as_array().cloned().unwrap_or_default()
    }

    /// Saves a PNG of the page under target/screenshots/ (not committed) and returns its path.
    pub async fn screenshot(&mut self, page: &Page, name: &str) -> PathBuf {
        use base64::Engine as _;
        // A background tab may not paint: bring it to the front first.
        self.call(Some(&page.session), "Page.bringToFront", json!({}))
            .await;
        let r = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64");
        let dir = super::repo_root().join("target/screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WHIP and WHEP clients of npm's `whip-whep` 1.2.0 (vendored, unchanged).
const WHIP_JS: &str = include_str!("../vendor/whip-whep/whip.js");
const WHEP_JS: &str = include_str!("../vendor/whip-whep/whep.js");

/// A tab on the server's own origin (a plain page, no kursrelay client in it) with the
/// vendored `WHIPClient` and `WHEPClient` defined, as an encoder's or player's page would.
pub async fn equipment_page(b: &mut Chromium, base: &str) -> Page {
    let page = b.open_blank().await;
    b.call(
        Some(page.session()),
        "Page.navigate",
        serde_json::json!({"url": format!("{base}/healthz")}),
    )
    .await;
    let mut patience =
        Patience::new("healthz loading", Duration::from_secs(20)).at_most_every(TRY_PAUSE);
    while b.try_eval(&page, "location.pathname").await != Some("/healthz".into()) {
        patience.pause().await;
    }
    for (js, class) in [(WHIP_JS, "WHIPClient"), (WHEP_JS, "WHEPClient")] {
        let module = js.replace(&format!("export class {class}"), &format!("class {class}"));
        b.eval(&page, &format!("{module}\n;window.{class} = {class}; true"))
            .await;
    }
    page
}

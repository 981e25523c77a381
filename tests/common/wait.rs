//! Waiting in tests without guessing how long things take: `eventually` polls until something
//! holds and, if it never does, fails saying what was awaited and for how long; `none_before`
//! checks that something did not happen by waiting for a *marker* the system produces only
//! after it has dealt with whatever could have made it happen. `stays_false` is the honest
//! fallback where no such marker exists: a window, named as one.
//!
//! Why not "sleep, then assert nothing happened": on a loaded machine (2 cores, three builds)
//! the server may not have run at all during the sleep, so the assertion passes without having
//! tested anything. A marker that must come *after* the unwanted thing is proof; a window is not.
//!
//! Owns no server state; only depends on tokio's clock and `std::thread::sleep`.

use std::future::Future;
use std::time::{Duration, Instant};

/// First pause between polls; it doubles up to `MAX_PAUSE` (the 20 ms `wait_until` always
/// used), so a condition that is nearly met is seen at once and no wait is slower than before.
/// Costly probes (a Chromium `eval`) ask for longer pauses: `Patience::at_most_every`.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(20);

fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(MAX_PAUSE)
}

/// Polls `probe` (with a short backoff) until it returns `Some`, or `timeout` passes: None.
/// The building block for `eventually*` and `wait_until`; the probe always runs at least once,
/// and once more at the deadline.
pub async fn poll_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = next_pause(pause);
    }
}

/// Waits until `cond` holds; panics after `timeout` with "`what`: not within …".
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    eventually_some(what, timeout, || cond().then_some(())).await
}

/// Waits until `probe` returns `Some` and returns what it found; panics after `timeout` with
/// "`what`: not within …".
pub async fn eventually_some<T>(
    what: &str,
    timeout: Duration,
    probe: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    match poll_for(timeout, probe).await {
        Some(v) => v,
        None => gave_up(what, started),
    }
}

/// Like `eventually_some` for a probe that must await (a database query, a Chromium `eval`, a
/// connection attempt). A probe that hangs is cut off at the deadline.
pub async fn eventually_async<T, F>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T
where
    F: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(left.max(MAX_PAUSE), probe()).await {
            return v;
        }
        let now = Instant::now();
        if now >= deadline {
            gave_up(what, started);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = next_pause(pause);
    }
}

/// `eventually_some` for plain `#[test]`s that drive a child process from a thread.
pub fn eventually_blocking<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        let now = Instant::now();
        if now >= deadline {
            gave_up(what, started);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = next_pause(pause);
    }
}

/// `eventually` for probes that cannot be a closure because they need `&mut` (a Chromium tab
/// is driven through `&mut Chromium`): the caller loops, and `Patience` paces the loop with the
/// same backoff and fails it the same way.
///
/// ```ignore
/// let mut patience = Patience::new("the page loaded", TIMEOUT);
/// while !loaded(&mut browser).await {
///     patience.pause().await;
/// }
/// ```
pub struct Patience {
    what: String,
    started: Instant,
    deadline: Instant,
    pause: Duration,
    max_pause: Duration,
}

impl Patience {
    pub fn new(what: impl Into<String>, timeout: Duration) -> Patience {
        let started = Instant::now();
        Patience {
            what: what.into(),
            started,
            deadline: started + timeout,
            pause: FIRST_PAUSE,
            max_pause: MAX_PAUSE,
        }
    }

    /// Backs off to at most `max` between tries instead of 20 ms (for costly probes, such as
    /// a tab's `getStats()`).
    pub fn at_most_every(mut self, max: Duration) -> Patience {
        self.max_pause = max;
        self
    }

    /// Sleeps before the next try; panics with "`what`: not within …" once time is up.
    pub async fn pause(&mut self) {
        if !self.try_pause().await {
            gave_up(&self.what, self.started);
        }
    }

    /// Sleeps before the next try and returns true; false (at once) once time is up, for a
    /// caller that fails with its own message or does not fail at all.
    pub async fn try_pause(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(self.max_pause);
        true
    }
}

fn gave_up(what: &str, started: Instant) -> ! {
    panic!(
        "{what}: not within {:.1} s",
        started.elapsed().as_secs_f64()
    )
}

/// "Not before the marker": runs `marker` — something the system does only *after* it has
/// handled whatever could make `happened` true (a reply on the same ordered WebSocket, a later
/// packet of the same sender read on the same path, the log line of the decision) — and then
/// asserts that `happened` is still false. `happened` is also checked while the marker is
/// awaited, so a failure shows at once. Returns what the marker returned. The marker must
/// bound its own wait (e.g. `eventually`, `wait_msg`); `none_before` adds no timeout.
pub async fn none_before<T>(
    unwanted: &str,
    mut happened: impl FnMut() -> bool,
    marker: impl Future<Output = T>,
) -> T {
    let mut marker = std::pin::pin!(marker);
    let mut pause = FIRST_PAUSE;
    loop {
        assert!(!happened(), "{unwanted}");
        tokio::select! {
            out = &mut marker => {
                assert!(!happened(), "{unwanted} (before the marker)");
                return out;
            }
            _ = tokio::time::sleep(pause) => pause = next_pause(pause),
        }
    }
}

/// A window, honestly named: asserts that `happened` stays false for `window` (checked with a
/// short backoff, so a failure shows at once). Use only where the protocol offers no marker
/// ordered after the unwanted thing — typically where the unwanted thing is a timer firing
/// too early — and say why at the call site.
pub async fn stays_false(unwanted: &str, window: Duration, mut happened: impl FnMut() -> bool) {
    let until = Instant::now() + window;
    let mut pause = FIRST_PAUSE;
    loop {
        assert!(!happened(), "{unwanted}");
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = next_pause(pause);
    }
}

/// `stays_false` for plain `#[test]`s (a thread, no runtime).
pub fn stays_false_blocking(unwanted: &str, window: Duration, mut happened: impl FnMut() -> bool) {
    let until = Instant::now() + window;
    let mut pause = FIRST_PAUSE;
    loop {
        assert!(!happened(), "{unwanted}");
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep(pause.min(until - now));
        pause = next_pause(pause);
    }
}

//! Abuse limits per client address: who the client is (`client_addr`, honouring
//! `X-Forwarded-For` / `X-Real-IP` only from `http.trusted_proxies`), a failure budget for bad
//! credentials (join tokens, admin keys) that decays with time, and a cap on WebSocket
//! connections per address that are not (yet) members let in with a valid join token. It
//! counts and refuses; it never logs an address.
//!
//! Why a budget and not a lock: many people reach the server from one hospital NAT address, and
//! a course leader must get in even when a machine behind the same address misbehaves. So a
//! join token is always checked and a valid one always accepted; only failures cost something
//! (a delay, then a refusal) once the address is over budget. The admin API, used by
//! registration staff (and the CLI on the server as the fallback), is refused outright while
//! the address is over budget, before the key is looked at. docs/ARCHITECTURE.md has the
//! reasoning.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

use crate::config::{AbuseConfig, Cidr};

/// Addresses tracked at most; above this, decayed entries are pruned, and if none are, new
/// addresses go untracked (fail open) rather than the map growing without bound.
const MAX_TRACKED: usize = 100_000;

/// The client's address as far as this server can tell, put into every request's extensions
/// by `client_addr`. None when the request did not come through a socket (tests that call
/// the router directly): no limits apply then.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// Middleware: works out the client address. The peer address is the client, unless the peer
/// is a trusted proxy; then the right-most address in `X-Forwarded-For` that is not itself a
/// trusted proxy (the left-most entries are whatever the client sent), else `X-Real-IP`.
pub async fn client_addr(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let addr = peer.map(|p| resolve(p, req.headers(), &state.guard.trusted));
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}

fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !is_trusted(**ip)) {
        return *ip;
    }
    if let Some(ip) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return ip.to_canonical();
    }
    peer
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (one home connection
/// gets a whole /64, so counting single v6 addresses would count nothing).
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
struct Entry {
    /// Failures not yet forgiven (leaky bucket).
    score: f64,
    last: Instant,
    websockets: u32,
}

/// What the guard has counted, for /metrics.
#[derive(Debug, Default)]
pub struct GuardCounts {
    pub auth_failures: AtomicU64,
    pub auth_refused: AtomicU64,
    pub websockets_refused: AtomicU64,
    pub websockets_open: AtomicU64,
}

/// The shared per-address state. Cheap to clone. Its lock is a std mutex held for a map
/// lookup only, never across an `.await`.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Mutex<HashMap<IpAddr, Entry>>>,
    config: AbuseConfig,
    pub trusted: Arc<[Cidr]>,
    pub counts: Arc<GuardCounts>,
}

/// Refused for now; try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub retry_after: Duration,
}

impl Guard {
    pub fn new(config: AbuseConfig, trusted: &[String]) -> Guard {
        Guard {
            inner: Arc::new(Mutex::new(HashMap::new())),
            config,
            // Validated by `Config::validate`; anything unparsable is left out.
            trusted: trusted.iter().filter_map(|s| Cidr::parse(s)).collect(),
            counts: Arc::new(GuardCounts::default()),
        }
    }

    /// The delay a failed credential costs once the address is over budget.
    pub fn penalty(&self) -> Duration {
        Duration::from_millis(self.config.penalty_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // A panic while holding this lock leaves only counters behind: keep using them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decay(&self, entry: &mut Entry, now: Instant) {
        let per_sec = self.config.auth_failures_forgiven_per_minute as f64 / 60.0;
        let elapsed = now.duration_since(entry.last).as_secs_f64();
        entry.score = (entry.score - elapsed * per_sec).max(0.0);
        entry.last = now;
    }

    /// Whether `addr` has used up its failure budget.
    pub fn over_budget(&self, addr: Option<IpAddr>, now: Instant) -> Result<(), OverBudget> {
        let Some(addr) = addr else { return Ok(()) };
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&key(addr)) else {
            return Ok(());
        };
        self.decay(entry, now);
        // `auth_failures` failures are allowed; the budget is used up once fewer than one
        // failure's worth is left (the score decays continuously, so it is rarely whole).
        let limit = f64::from(self.config.auth_failures) - 1.0;
        if entry.score <= limit {
            return Ok(());
        }
        let per_sec = self.config.auth_failures_forgiven_per_minute as f64 / 60.0;
        let secs = ((entry.score - limit) / per_sec).ceil().max(1.0);
        Err(OverBudget {
            retry_after: Duration::from_secs(secs as u64),
        })
    }

    /// A bad join token or admin key from `addr`. Successes are not counted.
    pub fn failed(&self, addr: Option<IpAddr>, now: Instant) {
        self.counts.auth_failures.fetch_add(1, Ordering::Relaxed);
        let Some(addr) = addr else { return };
        let mut map = self.lock();
        if let Some(entry) = self.entry(&mut map, key(addr), now) {
            self.decay(entry, now);
            // Capped, so a long flood is forgiven in bounded time after it stops.
            entry.score = (entry.score + 1.0).min(f64::from(self.config.auth_failures) * 2.0);
        }
    }

    /// Counts a refusal for /metrics.
    pub fn refused(&self) {
        self.counts.auth_refused.fetch_add(1, Ordering::Relaxed);
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<IpAddr, Entry>,
        k: IpAddr,
        now: Instant,
    ) -> Option<&'a mut Entry> {
        if !map.contains_key(&k) && map.len() >= MAX_TRACKED {
            let per_sec = self.config.auth_failures_forgiven_per_minute as f64 / 60.0;
            map.retain(|_, e| {
                e.websockets > 0
                    || e.score - now.duration_since(e.last).as_secs_f64() * per_sec > 0.0
            });
            if map.len() >= MAX_TRACKED {
                return None;
            }
        }
        Some(map.entry(k).or_insert(Entry {
            score: 0.0,
            last: now,
            websockets: 0,
        }))
    }

    /// A WebSocket slot for `addr`, or None if it has `websockets_per_address` open already.
    /// The slot is given back when the permit is dropped.
    pub fn websocket(&self, addr: Option<IpAddr>) -> Option<WsPermit> {
        let k = addr.map(key);
        if let Some(k) = k {
            let mut map = self.lock();
            if let Some(entry) = self.entry(&mut map, k, Instant::now()) {
                if entry.websockets >= self.config.websockets_per_address {
                    drop(map);
                    self.counts
                        .websockets_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                entry.websockets += 1;
            }
        }
        self.counts.websockets_open.fetch_add(1, Ordering::Relaxed);
        Some(WsPermit {
            guard: self.clone(),
            key: k,
        })
    }

    /// Tracked addresses (for tests and /metrics).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// One open WebSocket of an address.
pub struct WsPermit {
    guard: Guard,
    /// The address whose cap this socket counts against; None once it stopped counting.
    key: Option<IpAddr>,
}

impl WsPermit {
    /// The socket's member was let into its session with a valid join token: from now on it
    /// no longer counts against its address's cap. The cap is for sockets nobody has vouched
    /// for yet (connected, not joined, or waiting in an open link's lobby); a hospital's staff
    /// behind one NAT address may follow a course from hundreds of desks. Still counted in
    /// `websockets_open`.
    pub fn admitted(&mut self) {
        if let Some(k) = self.key.take() {
            self.guard.release(k);
        }
    }
}

impl Guard {
    fn release(&self, k: IpAddr) {
        let mut map = self.lock();
        if let Some(entry) = map.get_mut(&k) {
            entry.websockets = entry.websockets.saturating_sub(1);
            if entry.websockets == 0 && entry.score == 0.0 {
                map.remove(&k);
            }
        }
    }
}

impl Drop for WsPermit {
    fn drop(&mut self) {
        self.guard
            .counts
            .websockets_open
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(k) = self.key.take() {
            self.guard.release(k);
        }
    }
}

/// Compares two secrets in time that depends on neither's content nor on where they differ:
/// both are hashed first (SHA-256), so even the length of the real key does not show.
pub fn same_secret(given: &str, real: &str) -> bool {
    use ring::digest::{digest, SHA256};
    let a = digest(&SHA256, given.as_bytes());
    let b = digest(&SHA256, real.as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(budget: u32, per_minute: u64, ws: u32) -> Guard {
        Guard::new(
            AbuseConfig {
                auth_failures: budget,
                auth_failures_forgiven_per_minute: per_minute,
                penalty_ms: 10,
                websockets_per_address: ws,
            },
            &["127.0.0.1/32".into(), "10.0.0.0/8".into(), "::1".into()],
        )
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let g = guard(1, 1, 1);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        h.insert("x-real-ip", "198.51.100.1".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's headers are ignored.
        assert_eq!(resolve(ip("192.0.2.1"), &h, &g.trusted), ip("192.0.2.1"));
        // A trusted proxy: the right-most address it did not add itself.
        assert_eq!(resolve(ip("127.0.0.1"), &h, &g.trusted), ip("203.0.113.9"));
        // Two proxies in a row (both trusted) are skipped.
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.1.1.1".parse().unwrap(),
        );
        assert_eq!(resolve(ip("127.0.0.1"), &h, &g.trusted), ip("203.0.113.9"));
        // No usable X-Forwarded-For: X-Real-IP.
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(resolve(ip("127.0.0.1"), &h, &g.trusted), ip("198.51.100.1"));
        // Nothing at all: the proxy itself.
        assert_eq!(
            resolve(ip("127.0.0.1"), &HeaderMap::new(), &g.trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn budget_decays_and_counts_only_failures() {
        let g = guard(3, 60, 1); // one failure forgiven per second
        let a = Some("192.0.2.7".parse().unwrap());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(g.over_budget(a, t).is_ok());
            g.failed(a, t);
        }
        let over = g.over_budget(a, t).unwrap_err();
        assert_eq!(over.retry_after, Duration::from_secs(1));
        // Another address is not affected.
        assert!(g.over_budget(Some("192.0.2.8".parse().unwrap()), t).is_ok());
        // One second later one failure is forgiven.
        assert!(g.over_budget(a, t + Duration::from_millis(1000)).is_ok());
        // No client address (no socket): never limited.
        for _ in 0..10 {
            g.failed(None, t);
        }
        assert!(g.over_budget(None, t).is_ok());
    }

    #[test]
    fn ipv6_counted_by_its_64() {
        let g = guard(1, 1, 1);
        let t = Instant::now();
        g.failed(Some("2001:db8:1:2::1".parse().unwrap()), t);
        assert!(g
            .over_budget(Some("2001:db8:1:2::ffff".parse().unwrap()), t)
            .is_err());
        assert!(g
            .over_budget(Some("2001:db8:1:3::1".parse().unwrap()), t)
            .is_ok());
    }

    #[test]
    fn websocket_cap_per_address() {
        let g = guard(1, 1, 2);
        let a = Some("192.0.2.7".parse().unwrap());
        let p1 = g.websocket(a).unwrap();
        let _p2 = g.websocket(a).unwrap();
        assert!(g.websocket(a).is_none());
        assert!(g.websocket(Some("192.0.2.9".parse().unwrap())).is_some());
        drop(p1);
        let mut p3 = g.websocket(a).unwrap();
        assert_eq!(g.counts.websockets_refused.load(Ordering::Relaxed), 1);
        // Admitted members stop counting against the cap (and are given back only once).
        p3.admitted();
        let p4 = g.websocket(a).unwrap();
        assert!(g.websocket(a).is_none());
        drop(p3);
        assert!(g.websocket(a).is_none());
        drop(p4);
        let p5 = g.websocket(a);
        assert!(p5.is_some());
        // _p2 and p5.
        assert_eq!(g.counts.websockets_open.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("", "abc"));
        assert!(!same_secret("abcd", "abc"));
    }
}

//! Who a datagram on the shared media port belongs to. Pure (no I/O), so the fuzz target and
//! the unit tests drive it directly.
//!
//! RFC 7983 classification by the first byte; a known source address goes to the connection it
//! is bound to; an unknown address may only introduce itself with a STUN binding request whose
//! USERNAME starts with one of our connections' ICE ufrags — and it is bound only after that
//! connection has checked the MESSAGE-INTEGRITY (the engine binds when the connection answers
//! the request). Nothing unauthenticated ever replaces a binding.

use std::collections::HashMap;
use std::net::SocketAddr;

/// RFC 7983 §7: what the first byte says a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Stun,
    Dtls,
    Rtp,
    Other,
}

pub(crate) fn classify(d: &[u8]) -> Kind {
    match d.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Other,
    }
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;

/// The local (our) ufrag from a STUN binding request's USERNAME ("<our ufrag>:<their ufrag>"),
/// or None if `d` is not a well-formed binding request carrying one.
pub(crate) fn binding_request_ufrag(d: &[u8]) -> Option<&str> {
    if d.len() < 20 || d[4..8] != MAGIC_COOKIE {
        return None;
    }
    let kind = u16::from_be_bytes([d[0], d[1]]);
    if kind != BINDING_REQUEST {
        return None;
    }
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    if !len.is_multiple_of(4) {
        return None;
    }
    let body = d.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let attr = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + alen)?;
        if attr == ATTR_USERNAME {
            let user = std::str::from_utf8(value).ok()?;
            let (ours, theirs) = user.split_once(':')?;
            if ours.is_empty() || theirs.is_empty() {
                return None;
            }
            return Some(ours);
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// Why a datagram was not handed to a connection (each one a counter in /metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drop {
    /// Not STUN, DTLS or RTP/RTCP by its first byte.
    Unclassified,
    /// DTLS or RTP/RTCP from an address no connection is bound to.
    Unbound,
    /// STUN from an unknown address that is not a binding request with one of our ufrags.
    UnknownUfrag,
    /// The connection rejected it (bad MESSAGE-INTEGRITY, DTLS garbage, undecryptable SRTP…).
    Rejected,
    /// The source address sent more than its share this second.
    Flood,
}

/// The address and ufrag tables. `C` is the engine's connection key.
#[derive(Debug)]
pub(crate) struct Demux<C> {
    ufrags: HashMap<String, C>,
    bound: HashMap<SocketAddr, C>,
}

impl<C: Copy + PartialEq> Default for Demux<C> {
    fn default() -> Self {
        Demux {
            ufrags: HashMap::new(),
            bound: HashMap::new(),
        }
    }
}

impl<C: Copy + PartialEq> Demux<C> {
    pub(crate) fn add_ufrag(&mut self, ufrag: String, conn: C) {
        self.ufrags.insert(ufrag, conn);
    }

    /// Forgets a connection: its ufrag and every address bound to it (returned, so their
    /// ICE-TCP streams can be closed).
    pub(crate) fn remove(&mut self, conn: C) -> Vec<SocketAddr> {
        self.ufrags.retain(|_, c| *c != conn);
        let gone: Vec<SocketAddr> = self
            .bound
            .iter()
            .filter(|(_, c)| **c == conn)
            .map(|(a, _)| *a)
            .collect();
        for a in &gone {
            self.bound.remove(a);
        }
        gone
    }

    /// Which connection should see datagram `d` from `from`.
    pub(crate) fn route(&self, from: SocketAddr, d: &[u8]) -> Result<C, Drop> {
        let kind = classify(d);
        if kind == Kind::Other {
            return Err(Drop::Unclassified);
        }
        if let Some(c) = self.bound.get(&from) {
            return Ok(*c);
        }
        if kind != Kind::Stun {
            return Err(Drop::Unbound);
        }
        binding_request_ufrag(d)
            .and_then(|u| self.ufrags.get(u))
            .copied()
            .ok_or(Drop::UnknownUfrag)
    }

    /// Binds `addr` to `conn` once `conn` has answered a check from it (so the check passed its
    /// MESSAGE-INTEGRITY). An address already bound to another connection stays where it is.
    pub(crate) fn bind(&mut self, addr: SocketAddr, conn: C) {
        self.bound.entry(addr).or_insert(conn);
    }

    pub(crate) fn is_bound(&self, addr: &SocketAddr) -> bool {
        self.bound.contains_key(addr)
    }

    /// (ufrags, bound addresses).
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.ufrags.len(), self.bound.len())
    }
}

/// A per-source-address budget of datagrams per second, so one flooding address cannot take
/// the engine's time from everyone else. Fixed size: the table is cleared every second.
pub(crate) struct FloodGuard {
    counts: HashMap<SocketAddr, u32>,
    window_start_ms: u64,
    limit: u32,
}

impl FloodGuard {
    /// At most this many addresses are tracked per second; beyond it new ones pass unchecked
    /// (the kernel's socket buffer is then the limit).
    const MAX_TRACKED: usize = 4096;

    pub(crate) fn new(limit_per_second: u32) -> FloodGuard {
        FloodGuard {
            counts: HashMap::with_capacity(256),
            window_start_ms: 0,
            limit: limit_per_second,
        }
    }

    /// True if a datagram from `from` at `now_ms` is within its budget.
    pub(crate) fn allow(&mut self, from: SocketAddr, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.counts.clear();
            self.window_start_ms = now_ms;
        }
        if let Some(n) = self.counts.get_mut(&from) {
            *n += 1;
            return *n <= self.limit;
        }
        if self.counts.len() < Self::MAX_TRACKED {
            self.counts.insert(from, 1);
        }
        true
    }
}

/// Which SRTP/SRTCP senders (SSRCs) a connection lets through to rtc. rtc-srtp keeps state
/// (rollover counter, replay window) per SSRC and creates it *before* checking the
/// authentication tag, so datagrams with ever new SSRCs from a bound address — even
/// unauthenticated ones — grew the server by ≈ 200 bytes each without bound (found by the
/// `media_session` fuzz target; RELIABILITY.md). Allowed: the SSRCs the client declared in
/// its SDP (`a=ssrc:`), and a few undeclared ones each for RTP and RTCP (a receive-only
/// client's RTCP senders, a stream the SDP did not list), first come first served.
#[derive(Debug, Default)]
pub(crate) struct SsrcGate {
    declared: Vec<u32>,
    rtp: Vec<u32>,
    rtcp: Vec<u32>,
}

/// At most this many declared SSRCs are kept (an SDP may list more; the rest count as
/// undeclared).
pub(crate) const DECLARED_SSRCS: usize = 64;
/// Undeclared SSRCs allowed per connection for RTP (publishers declare theirs)…
pub(crate) const UNDECLARED_SSRCS: usize = 8;
/// … and for RTCP senders: webrtc-rs sends each receiver report from a random SSRC of its own
/// per received stream, so a subscriber of many tracks has many (≈ 200 bytes of state each).
pub(crate) const UNDECLARED_RTCP_SSRCS: usize = 64;

impl SsrcGate {
    /// Takes the `a=ssrc:<id> …` lines of a remote description.
    pub(crate) fn declare_from_sdp(&mut self, sdp: &str) {
        for line in sdp.lines() {
            let Some(rest) = line.strip_prefix("a=ssrc:") else {
                continue;
            };
            let Some(id) = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u32>().ok())
            else {
                continue;
            };
            if !self.declared.contains(&id) && self.declared.len() < DECLARED_SSRCS {
                self.declared.push(id);
            }
        }
    }

    /// Whether an RTP or RTCP datagram (`classify` said `Rtp`) may reach rtc.
    pub(crate) fn admit(&mut self, d: &[u8]) -> bool {
        // RFC 5761: a second byte of 192–223 is RTCP (sender SSRC at 4..8); else RTP (8..12).
        let rtcp = d.len() >= 2 && (192..=223).contains(&d[1]);
        let at = if rtcp { 4 } else { 8 };
        let Some(b) = d.get(at..at + 4) else {
            return true; // too short to carry state: rtc refuses it
        };
        let ssrc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if self.declared.contains(&ssrc) {
            return true;
        }
        let seen = if rtcp { &mut self.rtcp } else { &mut self.rtp };
        if seen.contains(&ssrc) {
            return true;
        }
        let cap = if rtcp {
            UNDECLARED_RTCP_SSRCS
        } else {
            UNDECLARED_SSRCS
        };
        if seen.len() < cap {
            seen.push(ssrc);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut d = Vec::new();
        d.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        d.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        d.extend_from_slice(&MAGIC_COOKIE);
        d.extend_from_slice(&[9; 12]);
        d.extend_from_slice(&attr);
        d
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0x00, 0x01]), Kind::Stun);
        assert_eq!(classify(&[22, 0xfe]), Kind::Dtls);
        assert_eq!(classify(&[0x80, 0x60]), Kind::Rtp);
        assert_eq!(classify(&[0x90]), Kind::Rtp);
        assert_eq!(classify(&[64]), Kind::Other);
        assert_eq!(classify(&[255]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }

    #[test]
    fn reads_the_ufrag_of_a_binding_request_only() {
        assert_eq!(
            binding_request_ufrag(&binding_request("abcd:efgh")),
            Some("abcd")
        );
        assert_eq!(binding_request_ufrag(&binding_request("abcd")), None);
        assert_eq!(binding_request_ufrag(&binding_request(":efgh")), None);
        let mut response = binding_request("abcd:efgh");
        response[0] = 0x01;
        response[1] = 0x01;
        assert_eq!(binding_request_ufrag(&response), None);
        let mut bad_cookie = binding_request("abcd:efgh");
        bad_cookie[4] = 0;
        assert_eq!(binding_request_ufrag(&bad_cookie), None);
        let mut short = binding_request("abcd:efgh");
        short.truncate(26);
        assert_eq!(binding_request_ufrag(&short), None);
    }

    #[test]
    fn routes_by_address_then_ufrag_and_never_rebinds() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let mut d = Demux::<u32>::default();
        d.add_ufrag("one".into(), 1);
        d.add_ufrag("two".into(), 2);
        assert_eq!(d.route(a, &binding_request("one:x")), Ok(1));
        assert_eq!(
            d.route(a, &binding_request("nope:x")),
            Err(Drop::UnknownUfrag)
        );
        assert_eq!(d.route(a, &[0x80, 0x60, 0, 0]), Err(Drop::Unbound));
        assert_eq!(d.route(a, &[22, 0xfe, 0xfd]), Err(Drop::Unbound));
        assert_eq!(d.route(a, &[70]), Err(Drop::Unclassified));
        d.bind(a, 1);
        assert_eq!(d.route(a, &[0x80, 0x60, 0, 0]), Ok(1));
        // A request for another connection from a bound address stays with the binding.
        assert_eq!(d.route(a, &binding_request("two:x")), Ok(1));
        d.bind(a, 2);
        assert_eq!(d.route(a, &[0x80]), Ok(1));
        assert_eq!(d.route(b, &binding_request("two:x")), Ok(2));
        d.remove(1);
        assert_eq!(d.route(a, &[0x80]), Err(Drop::Unbound));
        assert_eq!(d.len(), (1, 0));
    }

    #[test]
    fn flood_guard_limits_one_address_per_second() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let mut g = FloodGuard::new(3);
        assert!((0..3).all(|_| g.allow(a, 10)));
        assert!(!g.allow(a, 20));
        assert!(g.allow(b, 20));
        assert!(g.allow(a, 1010));
    }

    #[test]
    fn ssrc_gate_lets_declared_and_a_few_undeclared_senders_through() {
        let mut g = SsrcGate::default();
        g.declare_from_sdp(
            "v=0\r\na=ssrc:286331153 cname:x\r\na=ssrc:572662306 msid:a b\r\na=ssrc:junk\r\n",
        );
        let rtp = |ssrc: u32| {
            let mut d = vec![0x80, 96, 0, 1, 0, 0, 0, 0];
            d.extend_from_slice(&ssrc.to_be_bytes());
            d
        };
        let rtcp = |ssrc: u32| {
            let mut d = vec![0x81, 201, 0, 1];
            d.extend_from_slice(&ssrc.to_be_bytes());
            d
        };
        assert!(g.admit(&rtp(0x1111_1111)));
        assert!(g.admit(&rtcp(0x2222_2222)));
        let new_rtp = (1..=100).filter(|i| g.admit(&rtp(*i))).count();
        let new_rtcp = (1..=100).filter(|i| g.admit(&rtcp(1000 + i))).count();
        assert_eq!(
            (new_rtp, new_rtcp),
            (UNDECLARED_SSRCS, UNDECLARED_RTCP_SSRCS)
        );
        // Those admitted stay admitted; declared ones always are.
        assert!(g.admit(&rtp(1)) && g.admit(&rtcp(1001)) && g.admit(&rtp(0x2222_2222)));
        assert!(!g.admit(&rtp(100)));
        // Too short to name a sender: left to rtc, which refuses it.
        assert!(g.admit(&[0x80, 96, 0]));
    }
}

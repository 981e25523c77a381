//! Media-engine spike (issue 9, step 1): the risky part of the one-port engine, measured before
//! the server moves. Not part of kursrelay; BENCHMARKS.md has the numbers and the reading.
//!
//! What it proves and measures, on real loopback UDP:
//!
//! 1. **One server socket for N peer connections.** N sans-IO `rtc` connections (ICE-lite, our
//!    own ICE credentials, the server offering as for a subscribe connection) share ONE UDP
//!    socket. Datagrams are demultiplexed by the ufrag in the STUN USERNAME of a binding request
//!    from an unknown address, and by the bound remote address afterwards (RFC 7983 first-byte
//!    classification); everything else is dropped and counted. Each of the N clients is a full
//!    ICE `rtc` connection on its own socket. All N reach `connected` (ICE + DTLS).
//! 2. **The send path per forwarded packet**: for each packet of a 1150-byte "publisher" stream,
//!    every subscriber's header is rewritten (SSRC, payload type, sequence) and written through
//!    `rtc`'s sender (`write_rtp`, SRTP inside), drained with `poll_write`, and sent in batches of
//!    up to 64 datagrams with `sendmmsg(2)`. Server CPU per forwarded packet is the thread's CPU
//!    time over the forwarded packets; the clients then decrypt and count what arrived.
//! 3. Heap per connected server connection.
//!
//! Run: `cargo bench --bench engine_spike -- [N] [packets] [default|none]`
//! (N subscribers, default 200; packets from the publisher, default 2000; interceptor set).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

/// Counts heap allocations and live bytes (for allocations per packet and heap per connection).
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(n as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One server-side (subscribe) connection: the rtc peer connection and its one video sender.
struct ServerConn {
    pc: RTCPeerConnection,
    sender: RTCRtpSenderId,
    ssrc: u32,
    pt: u8,
    seq: u16,
    connected: bool,
}

/// One client: its own socket and a full-ICE rtc connection.
struct Client {
    socket: UdpSocket,
    pc: RTCPeerConnection,
    connected: bool,
    received: u64,
}

/// What happened to datagrams arriving at the shared socket.
#[derive(Default, Debug)]
struct Demux {
    by_ufrag: u64,
    by_address: u64,
    dropped: u64,
}

fn host_candidate(addr: SocketAddr) -> Res<rtc::peer_connection::transport::RTCIceCandidateInit> {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    Ok(RTCIceCandidate::from(&c).to_json()?)
}

fn build(
    lite: bool,
    creds: Option<(String, String)>,
    interceptors: bool,
) -> Res<RTCPeerConnection> {
    let mut me = MediaEngine::default();
    me.register_default_codecs()?;
    let registry = if interceptors {
        register_default_interceptors(Registry::new(), &mut me)?
    } else {
        Registry::new()
    };
    let mut se = SettingEngineBuilder::new()
        .with_srtp_protection_profiles(vec![
            rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        ])
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_lite(lite);
    if let Some((u, p)) = creds {
        se = se.with_ice_credentials(u, p);
    }
    Ok(RTCPeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_setting_engine(se.build())
        .with_interceptor_registry(registry)
        .build(Instant::now())?)
}

/// The local ufrag from a STUN binding request's USERNAME ("<our ufrag>:<their ufrag>").
fn stun_local_ufrag(d: &[u8]) -> Option<&str> {
    if d.len() < 20 || d[0] > 3 || d[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let body = d.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        let value = body.get(i + 4..i + 4 + alen)?;
        if kind == 0x0006 {
            let user = std::str::from_utf8(value).ok()?;
            return user.split(':').next();
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// Thread CPU time, for the server's own cost (the clients run in the same thread, untimed).
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Datagrams waiting for one `sendmmsg`.
struct Batch {
    bufs: Vec<(SocketAddr, BytesMut)>,
    sent: u64,
    syscalls: u64,
}

impl Batch {
    const MAX: usize = 64;

    fn push(&mut self, socket: &UdpSocket, to: SocketAddr, data: BytesMut) {
        self.bufs.push((to, data));
        if self.bufs.len() == Self::MAX {
            self.flush(socket);
        }
    }

    /// Sends and returns the buffers to `pool` (the lean path reuses them: no allocation).
    fn flush_into(&mut self, socket: &UdpSocket, pool: &mut Vec<BytesMut>) {
        self.send(socket);
        pool.extend(self.bufs.drain(..).map(|(_, b)| b));
    }

    fn flush(&mut self, socket: &UdpSocket) {
        self.send(socket);
        self.bufs.clear();
    }

    fn send(&mut self, socket: &UdpSocket) {
        if self.bufs.is_empty() {
            return;
        }
        let mut addrs: Vec<libc::sockaddr_in> = Vec::with_capacity(self.bufs.len());
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(self.bufs.len());
        for (to, data) in &self.bufs {
            let SocketAddr::V4(v4) = to else {
                continue;
            };
            addrs.push(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            });
            iovs.push(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
        }
        // SAFETY: a zeroed mmsghdr is valid; every pointer set below outlives the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..iovs.len())
            .map(|i| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut off = 0;
        while off < msgs.len() {
            // SAFETY: msgs[off..] are initialised mmsghdrs pointing at live buffers.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    msgs[off..].as_mut_ptr(),
                    (msgs.len() - off) as u32,
                    0,
                )
            };
            self.syscalls += 1;
            if n <= 0 {
                break; // EAGAIN: a real engine drops video here and waits for a keyframe
            }
            off += n as usize;
        }
        self.sent += off as u64;
    }
}

struct Server {
    socket: UdpSocket,
    local: SocketAddr,
    conns: Vec<ServerConn>,
    ufrags: HashMap<String, usize>,
    bound: HashMap<SocketAddr, usize>,
    demux: Demux,
    batch: Batch,
}

impl Server {
    /// Reads every waiting datagram and feeds it to its connection.
    fn read(&mut self, buf: &mut [u8]) -> Res<()> {
        loop {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let d = &buf[..n];
            let idx = match self.bound.get(&from) {
                Some(&i) => {
                    self.demux.by_address += 1;
                    Some(i)
                }
                // Only an ICE binding request may introduce a new address.
                None => match stun_local_ufrag(d).and_then(|u| self.ufrags.get(u)) {
                    Some(&i) => {
                        self.demux.by_ufrag += 1;
                        Some(i)
                    }
                    None => None,
                },
            };
            let Some(i) = idx else {
                self.demux.dropped += 1;
                continue;
            };
            let now = Instant::now();
            let c = &mut self.conns[i];
            if c.pc
                .handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: self.local,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(d),
                })
                .is_err()
            {
                self.demux.dropped += 1;
            }
        }
    }

    /// Drains every connection's output, events and reads; binds addresses that the
    /// connection answered (it checked the MESSAGE-INTEGRITY).
    fn drain(&mut self) {
        for (i, c) in self.conns.iter_mut().enumerate() {
            while let Some(out) = c.pc.poll_write() {
                self.bound.entry(out.transport.peer_addr).or_insert(i);
                self.batch
                    .push(&self.socket, out.transport.peer_addr, out.message);
            }
            while let Some(e) = c.pc.poll_event() {
                if matches!(
                    e,
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        RTCPeerConnectionState::Connected
                    )
                ) {
                    c.connected = true;
                }
            }
            while c.pc.poll_read().is_some() {}
        }
        self.batch.flush(&self.socket);
    }

    fn timeouts(&mut self, now: Instant) {
        for c in &mut self.conns {
            if c.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = c.pc.handle_timeout(now);
            }
        }
    }
}

fn client_step(c: &mut Client, buf: &mut [u8], now: Instant) -> Res<()> {
    let local = c.socket.local_addr()?;
    loop {
        match c.socket.recv_from(buf) {
            Ok((n, from)) => {
                let _ = c.pc.handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: local,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(&buf[..n]),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    if c.pc.poll_timeout().is_some_and(|t| t <= now) {
        let _ = c.pc.handle_timeout(now);
    }
    while let Some(out) = c.pc.poll_write() {
        let _ = c.socket.send_to(&out.message, out.transport.peer_addr);
    }
    while let Some(e) = c.pc.poll_event() {
        if matches!(
            e,
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected)
        ) {
            c.connected = true;
        }
    }
    while let Some(m) = c.pc.poll_read() {
        if matches!(m.message, RTCMessage::RtpPacket(..)) {
            c.received += 1;
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    // `cargo bench` passes `--bench`; take our own positional arguments only.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let packets: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mode = args.get(2).map(String::as_str).unwrap_or("default");
    let interceptors = mode == "default";
    let lean = mode == "lean";

    // Loopback only: every datagram goes to the spike's own client sockets.
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    // A media server's socket needs room for bursts (handshakes of many joiners, keyframes).
    let sock = socket2::SockRef::from(&socket);
    sock.set_recv_buffer_size(8 << 20)?;
    sock.set_send_buffer_size(8 << 20)?;
    let mut server = Server {
        socket,
        local,
        conns: Vec::with_capacity(n),
        ufrags: HashMap::new(),
        bound: HashMap::new(),
        demux: Demux::default(),
        batch: Batch {
            bufs: Vec::with_capacity(Batch::MAX),
            sent: 0,
            syscalls: 0,
        },
    };
    let mut clients = Vec::with_capacity(n);
    let live0 = LIVE.load(Ordering::Relaxed);
    let setup = Instant::now();
    for i in 0..n {
        let ufrag = format!("kr{i:06}");
        let mut pc = build(
            true,
            Some((ufrag.clone(), format!("{:024}", i))),
            interceptors,
        )?;
        let ssrc = 0x1000_0000 + i as u32;
        let sender = pc.add_track(MediaStreamTrack::new(
            format!("s{i}"),
            format!("v{i}"),
            format!("v{i}"),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: "video/VP8".into(),
                    clock_rate: 90_000,
                    ..Default::default()
                },
                ..Default::default()
            }],
        ))?;
        pc.add_local_candidate(host_candidate(local)?)?;
        let offer = pc.create_offer(None)?;
        pc.set_local_description(Instant::now(), offer.clone())?;

        let csock = UdpSocket::bind("127.0.0.1:0")?;
        csock.set_nonblocking(true)?;
        let mut cpc = build(false, None, interceptors)?;
        cpc.add_local_candidate(host_candidate(csock.local_addr()?)?)?;
        cpc.set_remote_description(Instant::now(), offer)?;
        let answer = cpc.create_answer(None)?;
        cpc.set_local_description(Instant::now(), answer.clone())?;
        pc.set_remote_description(Instant::now(), answer)?;
        cpc.add_remote_candidate(host_candidate(local)?)?;
        // ICE-lite learns the client's address from its checks (peer-reflexive); no candidate.
        let pt = pc
            .rtp_sender(sender)
            .ok_or("sender")?
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))
            .map(|c| c.payload_type)
            .unwrap_or(96);
        server.ufrags.insert(ufrag, i);
        server.conns.push(ServerConn {
            pc,
            sender,
            ssrc,
            pt,
            seq: 1000,
            connected: false,
        });
        clients.push(Client {
            socket: csock,
            pc: cpc,
            connected: false,
            received: 0,
        });
    }

    // Drive everything until every pair is connected.
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = Instant::now();
        for c in &mut clients {
            client_step(c, &mut buf, now)?;
        }
        server.read(&mut buf)?;
        server.timeouts(now);
        server.drain();
        let up = server.conns.iter().filter(|c| c.connected).count();
        let cup = clients.iter().filter(|c| c.connected).count();
        if up == n && cup == n {
            break;
        }
        if now > deadline {
            return Err(format!(
                "only {up}/{n} server and {cup}/{n} clients connected; demux {:?}",
                server.demux
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let setup_s = setup.elapsed().as_secs_f64();
    let heap_per_conn = (LIVE.load(Ordering::Relaxed) - live0) as f64 / n as f64 / 2.0 / 1024.0;
    println!(
        "{n} connections on one server port {}: connected in {setup_s:.1} s; demux {:?}",
        local.port(),
        server.demux
    );

    // The send path: a 1150-byte publisher stream forwarded to every subscriber.
    let payload = Bytes::from(vec![0x5au8; 1150]);
    let mut server_cpu = Duration::ZERO;
    let mut send_cpu = Duration::ZERO;
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let sent0 = server.batch.sent;
    let calls0 = server.batch.syscalls;
    // The lean path: our own header rewrite and AES-128-GCM seal in place per subscriber
    // (RFC 7714 nonce), into buffers from a pool, as the engine would do with each connection's
    // exported SRTP keys. The spike has no key export (it needs a patch to rtc), so it seals
    // with a made-up key: the clients cannot decrypt these, only the cost is real.
    let seal_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[7u8; 16]).map_err(|_| "aes key")?,
    );
    let salt = [3u8; 12];
    let mut pool: Vec<BytesMut> = (0..Batch::MAX)
        .map(|_| BytesMut::with_capacity(1500))
        .collect();
    let peers: Vec<SocketAddr> = (0..n)
        .map(|i| {
            server
                .bound
                .iter()
                .find(|(_, &c)| c == i)
                .map(|(a, _)| *a)
                .ok_or("unbound connection")
        })
        .collect::<Result<_, _>>()?;
    for k in 0..packets {
        let t0 = cpu_now();
        if lean {
            for (i, c) in server.conns.iter_mut().enumerate() {
                c.seq = c.seq.wrapping_add(1);
                let mut buf = pool.pop().unwrap_or_else(|| BytesMut::with_capacity(1500));
                buf.clear();
                buf.extend_from_slice(&[0x80, 0x80 | c.pt]);
                buf.extend_from_slice(&c.seq.to_be_bytes());
                buf.extend_from_slice(&(3000 * k as u32).to_be_bytes());
                buf.extend_from_slice(&c.ssrc.to_be_bytes());
                buf.extend_from_slice(&payload);
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&c.ssrc.to_be_bytes());
                iv[10..12].copy_from_slice(&c.seq.to_be_bytes());
                for (b, s) in iv.iter_mut().zip(salt) {
                    *b ^= s;
                }
                let (hdr, body) = buf.split_at_mut(12);
                let tag = seal_key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(iv),
                        ring::aead::Aad::from(&hdr[..]),
                        body,
                    )
                    .map_err(|_| "seal")?;
                buf.extend_from_slice(tag.as_ref());
                let before = cpu_now();
                if server.batch.bufs.len() + 1 == Batch::MAX {
                    server.batch.bufs.push((peers[i], buf));
                    server.batch.flush_into(&server.socket, &mut pool);
                } else {
                    server.batch.bufs.push((peers[i], buf));
                }
                send_cpu += cpu_now() - before;
            }
            let t1 = cpu_now();
            server.batch.flush_into(&server.socket, &mut pool);
            let t2 = cpu_now();
            server_cpu += t2 - t0;
            send_cpu += t2 - t1;
            continue;
        }
        let now = Instant::now();
        for c in &mut server.conns {
            c.seq = c.seq.wrapping_add(1);
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: true,
                    payload_type: c.pt,
                    sequence_number: c.seq,
                    timestamp: 3000 * k as u32,
                    ssrc: c.ssrc,
                    ..Default::default()
                },
                payload: payload.clone(),
            };
            c.pc.rtp_sender(c.sender)
                .ok_or("sender")?
                .write_rtp(now, packet)?;
            while let Some(out) = c.pc.poll_write() {
                let before = cpu_now();
                server
                    .batch
                    .push(&server.socket, out.transport.peer_addr, out.message);
                send_cpu += cpu_now() - before;
            }
        }
        let t1 = cpu_now();
        server.batch.flush(&server.socket);
        let t2 = cpu_now();
        server_cpu += t2 - t0;
        send_cpu += t2 - t1;
        // Let the clients take their packets (untimed), every few packets so socket buffers
        // do not overflow.
        if k % 4 == 3 {
            let now = Instant::now();
            for c in &mut clients {
                client_step(c, &mut buf, now)?;
            }
        }
    }
    let forwarded = (packets * n) as f64;
    let allocs = (ALLOCS.load(Ordering::Relaxed) - allocs0) as f64;
    std::thread::sleep(Duration::from_millis(50));
    let now = Instant::now();
    for c in &mut clients {
        client_step(c, &mut buf, now)?;
    }
    let received: u64 = clients.iter().map(|c| c.received).sum();
    println!(
        "send path ({}): {:.2} µs server CPU per forwarded packet, of which {:.2} µs \
         in sendmmsg (on loopback the kernel also delivers to the receiving socket there); \
         {:.1} allocations per packet (includes the untimed clients), {} datagrams in {} sendmmsg calls; \
         clients decrypted {received} of {forwarded} ({:.2} % lost on loopback); \
         heap ≈ {heap_per_conn:.0} KB per connection (server and client alike)",
        mode,
        server_cpu.as_secs_f64() * 1e6 / forwarded,
        send_cpu.as_secs_f64() * 1e6 / forwarded,
        allocs / forwarded,
        server.batch.sent - sent0,
        server.batch.syscalls - calls0,
        100.0 * (1.0 - received as f64 / forwarded)
    );
    Ok(())
}

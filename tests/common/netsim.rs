//! A userspace network impairer for a test peer's media: loss, delay and a dead link, applied
//! to every UDP datagram the peer's WebRTC stack sends or receives.
//!
//! It stands in for `tc qdisc … netem`, which this kernel (a Firecracker VM, also in CI) does
//! not have ("Specified qdisc kind is unknown"), with no modules to load. It sits at the
//! peer's own sockets: the peer's webrtc-rs stack is given a `Runtime` whose UDP sockets are
//! `ImpairedSocket`s. Each direction is a delay line of its own:
//!
//! - outgoing: `poll_send` drops a datagram with probability `loss`, else queues it with a
//!   due time `now + delay`; a task sends each at its due time (FIFO: constant delay keeps
//!   order, as netem without jitter does);
//! - incoming: a task reads the real socket, drops with probability `loss`, and hands each
//!   datagram to the stack at `now + delay`;
//! - `down`: every datagram both ways is dropped silently (a link that died: no ICMP, no
//!   FIN — the server learns it only from ICE consent).
//!
//! So "5 % loss, 100 ms delay" here means 5 % loss and 100 ms delay *in each direction* (RTT
//! +200 ms), harsher than netem on one interface's egress. The server is untouched and sees
//! only a lossy, late path: these tests stay valid whatever its media engine is.
//!
//! A link can also carry a bandwidth limit per direction (`Link::set_rate`): a token bucket
//! in front of a drop-tail queue of a set depth (`Shaper`), the model of a home line (a 4G
//! cell or DSL modem with its buffer). Datagrams leave the queue at the line's rate; one that
//! would wait longer than the queue holds is dropped. The limit is the `Link`'s, so every flow
//! that goes through one `Link` shares it (one home, several connections); give each flow a
//! `Link` of its own for a limit per flow. Loss is applied first (the radio), then the queue,
//! then the delay.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

// The shaper itself is pure and shared with the load generator (benches/loadgen).
#[path = "shaper.rs"]
pub mod shaper;
use shaper::{Rate, Shaper, Verdict};

/// The impairment of one peer's link; change it at any time.
#[derive(Debug, Default)]
pub struct Link {
    /// Loss per direction, in parts per million.
    loss_ppm: AtomicU32,
    delay_us: AtomicU64,
    down: AtomicBool,
    pub sent: AtomicU64,
    pub sent_dropped: AtomicU64,
    pub received: AtomicU64,
    pub received_dropped: AtomicU64,
    /// Besides random loss: these incoming RTP packets are lost (see `LossPlan`).
    pub plan: Mutex<Option<LossPlan>>,
    /// Bytes of what `sent` and `received` count (before any drop).
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Bandwidth limits, peer → far end (`Dir::FromPeer`) and far end → peer (`Dir::ToPeer`).
    shapers: [Mutex<Option<Shaper>>; 2],
}

/// A direction of a `Link`, seen from the impaired peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// What the peer sends (its upload).
    FromPeer,
    /// What the peer is sent (its download: the server → viewer direction).
    ToPeer,
}

/// Loses chosen incoming RTP packets: the n-th ones (counting from 1) larger than `min_len`
/// bytes (video, not audio), each only the first time its (SSRC, sequence number) is seen,
/// so the retransmission passes. RTP is recognised from the cleartext SRTP header.
#[derive(Debug, Default)]
pub struct LossPlan {
    pub nth: Vec<u64>,
    pub min_len: usize,
    seen: u64,
    /// (ssrc, seq) of what was lost, for the test to check.
    pub lost: Vec<(u32, u16)>,
}

impl LossPlan {
    pub fn new(nth: Vec<u64>, min_len: usize) -> LossPlan {
        LossPlan {
            nth,
            min_len,
            ..Default::default()
        }
    }

    fn drops(&mut self, d: &[u8]) -> bool {
        if d.len() <= self.min_len || !(128..=191).contains(&d[0]) || (192..=223).contains(&d[1]) {
            return false;
        }
        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        let seq = u16::from_be_bytes([d[2], d[3]]);
        if self.lost.contains(&(ssrc, seq)) {
            return false; // the retransmission
        }
        self.seen += 1;
        if self.nth.contains(&self.seen) {
            self.lost.push((ssrc, seq));
            return true;
        }
        false
    }
}

impl Link {
    pub fn new(loss: f64, delay: Duration) -> Arc<Link> {
        let link = Arc::new(Link::default());
        link.set(loss, delay);
        link
    }

    pub fn set(&self, loss: f64, delay: Duration) {
        self.loss_ppm.store((loss * 1e6) as u32, Ordering::Relaxed);
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// A dead link: nothing passes either way, and nobody is told.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Limits `dir` to `rate` from now on (None: unlimited). A shaper already there keeps its
    /// queue and changes speed (a line that drops from 5 Mbit/s to 600 kbit/s mid-course).
    pub fn set_rate(&self, dir: Dir, rate: Option<Rate>) {
        let now = Instant::now();
        let mut shaper = self.shapers[dir as usize].lock().unwrap();
        match (shaper.as_mut(), rate) {
            (Some(s), Some(r)) => s.set_rate(now, r),
            (_, r) => *shaper = r.map(|r| Shaper::new(now, r)),
        }
    }

    /// A copy of `dir`'s shaper (its counters: what passed, what the queue dropped).
    pub fn shaper(&self, dir: Dir) -> Option<Shaper> {
        self.shapers[dir as usize].lock().unwrap().clone()
    }

    pub fn pass(&self) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        ppm == 0 || rand::random::<u32>() % 1_000_000 >= ppm
    }

    pub fn due(&self) -> Instant {
        Instant::now() + Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// A datagram of `len` bytes going `dir`: counted, then lost, queued or passed. Returns
    /// when to hand it on (None: dropped, and counted as such).
    pub fn admit(&self, dir: Dir, len: usize) -> Option<Instant> {
        let (count, bytes, dropped) = match dir {
            Dir::FromPeer => (&self.sent, &self.sent_bytes, &self.sent_dropped),
            Dir::ToPeer => (&self.received, &self.received_bytes, &self.received_dropped),
        };
        count.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
        let drop = || {
            dropped.fetch_add(1, Ordering::Relaxed);
            None
        };
        if !self.pass() {
            return drop();
        }
        let delay = Duration::from_micros(self.delay_us.load(Ordering::Relaxed));
        let now = Instant::now();
        match self.shapers[dir as usize].lock().unwrap().as_mut() {
            None => Some(now + delay),
            Some(s) => match s.offer(now, len) {
                Verdict::Leaves(at) => Some(at + delay),
                Verdict::Dropped => drop(),
            },
        }
    }

    pub fn summary(&self) -> String {
        let f = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = format!(
            "link: sent {} (dropped {}), received {} (dropped {})",
            f(&self.sent),
            f(&self.sent_dropped),
            f(&self.received),
            f(&self.received_dropped)
        );
        for (dir, name) in [(Dir::FromPeer, "up"), (Dir::ToPeer, "down")] {
            if let Some(s) = self.shaper(dir) {
                out.push_str(&format!(
                    "; {name} {} kbit/s: passed {} B, queue dropped {} of {}",
                    s.rate().bits_per_sec / 1000,
                    s.passed_bytes,
                    s.dropped,
                    s.passed + s.dropped
                ));
            }
        }
        out
    }
}

/// A webrtc `Runtime` whose UDP sockets go through `link`.
#[derive(Debug)]
pub struct ImpairedRuntime {
    pub link: Arc<Link>,
}

type Datagram = (Instant, SocketAddr, Vec<u8>);

impl Runtime for ImpairedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let udp = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let stop = CancellationToken::new();
        let link = self.link.clone();

        // Outgoing delay line.
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Datagram>();
        let (tx_udp, tx_stop) = (udp.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (due, to, data) = tokio::select! {
                    _ = tx_stop.cancelled() => return,
                    d = out_rx.recv() => match d { Some(d) => d, None => return },
                };
                tokio::time::sleep_until(due).await;
                let _ = tx_udp.send_to(&data, to).await;
            }
        });

        // Incoming: read, drop or delay, hand on.
        let (line_tx, mut line_rx) = mpsc::unbounded_channel::<Datagram>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
        let (rx_udp, rx_link, rx_stop) = (udp.clone(), link.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = tokio::select! {
                    _ = rx_stop.cancelled() => return,
                    r = rx_udp.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
                };
                let planned = rx_link
                    .plan
                    .lock()
                    .unwrap()
                    .as_mut()
                    .is_some_and(|p| p.drops(&buf[..n]));
                if planned {
                    rx_link.received.fetch_add(1, Ordering::Relaxed);
                    rx_link
                        .received_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    rx_link.received_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(due) = rx_link.admit(Dir::ToPeer, n) else {
                    continue;
                };
                if line_tx.send((due, from, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
        let line_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let (due, from, data) = tokio::select! {
                    _ = line_stop.cancelled() => return,
                    d = line_rx.recv() => match d { Some(d) => d, None => return },
                };
                tokio::time::sleep_until(due).await;
                if in_tx.send((from, data)).is_err() {
                    return;
                }
            }
        });

        Ok(Arc::new(ImpairedSocket {
            local,
            out: out_tx,
            inbox: Mutex::new(in_rx),
            link,
            stop,
        }))
    }

    fn wrap_tcp_listener(&self, l: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(l)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(d)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }
}

#[derive(Debug)]
struct ImpairedSocket {
    local: SocketAddr,
    out: mpsc::UnboundedSender<Datagram>,
    inbox: Mutex<mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>>,
    link: Arc<Link>,
    stop: CancellationToken,
}

impl Drop for ImpairedSocket {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AsyncUdpSocket for ImpairedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, t: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // One datagram per transmit: `max_gso_segments` is 1.
        if let Some(due) = self.link.admit(Dir::FromPeer, t.contents.len()) {
            let _ = self.out.send((due, t.destination, t.contents.to_vec()));
        }
        Poll::Ready(Ok(t.contents.len()))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().expect("inbox lock");
        match inbox.poll_recv(cx) {
            Poll::Ready(Some((from, data))) => {
                let n = data.len().min(bufs[0].len());
                bufs[0][..n].copy_from_slice(&data[..n]);
                meta[0] = RecvMeta::default();
                meta[0].len = n;
                meta[0].stride = n.max(1);
                meta[0].addr = from;
                meta[0].dst_ip = Some(self.local.ip());
                Poll::Ready(Ok(1))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::Error::other("impaired socket closed"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An impairing UDP relay, for peers whose sockets cannot be given `ImpairedRuntime` (a
/// browser). It listens on `addr`, which the server advertises as its media address
/// (`media.public_ips`, on loopback here), and forwards every client flow (one source address)
/// to the server's real media port from a socket of its own, and the answers back. Each flow
/// goes through the `Link` that was current when the flow began (`set_new_flows`), in both
/// directions: `sent` counts what the client sent, `received` what it was sent. So a test
/// can connect a clean publisher, then switch, then connect an impaired subscriber.
pub struct UdpRelay {
    pub addr: SocketAddr,
    next: Arc<Mutex<Arc<Link>>>,
    pub flows: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl UdpRelay {
    pub async fn start(listen: SocketAddr, server: SocketAddr) -> io::Result<UdpRelay> {
        let front = Arc::new(tokio::net::UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let next = Arc::new(Mutex::new(Link::new(0.0, Duration::ZERO)));
        let flows = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (r_next, r_flows, r_stop) = (next.clone(), flows.clone(), stop.clone());
        tokio::spawn(async move {
            let mut table: std::collections::HashMap<SocketAddr, RelayFlow> = Default::default();
            let mut buf = vec![0u8; 2048];
            loop {
                let (n, client) = tokio::select! {
                    _ = r_stop.cancelled() => return,
                    r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                let flow = match table.entry(client) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let link = r_next.lock().unwrap().clone();
                        let started =
                            RelayFlow::start(front.clone(), client, server, link, r_stop.clone())
                                .await;
                        let Ok(f) = started else { continue };
                        r_flows.fetch_add(1, Ordering::Relaxed);
                        e.insert(f)
                    }
                };
                if let Some(due) = flow.link.admit(Dir::FromPeer, n) {
                    let _ = flow.up.send((due, server, buf[..n].to_vec()));
                }
            }
        });
        Ok(UdpRelay {
            addr,
            next,
            flows,
            stop,
        })
    }

    /// The link flows that begin from now on go through.
    pub fn set_new_flows(&self, link: Arc<Link>) {
        *self.next.lock().unwrap() = link;
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct RelayFlow {
    link: Arc<Link>,
    up: mpsc::UnboundedSender<Datagram>,
}

impl RelayFlow {
    async fn start(
        front: Arc<tokio::net::UdpSocket>,
        client: SocketAddr,
        server: SocketAddr,
        link: Arc<Link>,
        stop: CancellationToken,
    ) -> io::Result<RelayFlow> {
        let back = Arc::new(tokio::net::UdpSocket::bind(SocketAddr::new(server.ip(), 0)).await?);
        // Client → server: a delay line, then out of the flow's own socket.
        let (up, mut up_rx) = mpsc::unbounded_channel::<Datagram>();
        let (b, s) = (back.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (due, to, data) = tokio::select! {
                    _ = s.cancelled() => return,
                    d = up_rx.recv() => match d { Some(d) => d, None => return },
                };
                tokio::time::sleep_until(due).await;
                let _ = b.send_to(&data, to).await;
            }
        });
        // Server → client: read, lose, delay, send from the relay's advertised address.
        let (down, mut down_rx) = mpsc::unbounded_channel::<Datagram>();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (due, to, data) = tokio::select! {
                    _ = s.cancelled() => return,
                    d = down_rx.recv() => match d { Some(d) => d, None => return },
                };
                tokio::time::sleep_until(due).await;
                let _ = front.send_to(&data, to).await;
            }
        });
        let l = link.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let n = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = back.recv_from(&mut buf) => match r { Ok((n, _)) => n, Err(_) => continue },
                };
                let Some(due) = l.admit(Dir::ToPeer, n) else {
                    continue;
                };
                if down.send((due, client, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        });
        Ok(RelayFlow { link, up })
    }
}

//! A webrtc `Runtime` for test peers whose UDP sockets lose chosen RTP packets before the
//! WebRTC stack sees them — a real loss from the receiver's point of view, so its NACK
//! generator asks the server to send the packet again. RTP is recognised from the cleartext
//! SRTP header (RFC 7983 first byte, RTCP payload types excluded).

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Which packets to lose: the n-th RTP packets (counting from 1) larger than `min_len` bytes
/// (video, not audio), each only the first time its (SSRC, sequence number) is seen.
#[derive(Debug, Default)]
pub struct LossPlan {
    pub nth: Vec<u64>,
    pub min_len: usize,
    seen: AtomicU64,
    /// (ssrc, seq) of what was lost, for the test to check.
    pub lost: Mutex<Vec<(u32, u16)>>,
}

impl LossPlan {
    pub fn new(nth: Vec<u64>, min_len: usize) -> Arc<LossPlan> {
        Arc::new(LossPlan {
            nth,
            min_len,
            ..Default::default()
        })
    }

    fn should_drop(&self, d: &[u8]) -> bool {
        if d.len() < 12 || !(128..=191).contains(&d[0]) || (192..=223).contains(&d[1]) {
            return false;
        }
        if d.len() <= self.min_len {
            return false;
        }
        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        let seq = u16::from_be_bytes([d[2], d[3]]);
        let mut lost = self.lost.lock().unwrap();
        if lost.contains(&(ssrc, seq)) {
            return false; // the retransmission
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.nth.contains(&n) {
            lost.push((ssrc, seq));
            return true;
        }
        false
    }
}

#[derive(Debug)]
pub struct LossyRuntime {
    pub plan: Arc<LossPlan>,
}

impl Runtime for LossyRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(LossySocket {
            inner,
            plan: self.plan.clone(),
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
struct LossySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    plan: Arc<LossPlan>,
}

impl AsyncUdpSocket for LossySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        // One datagram per message, so a loss never takes its neighbours along.
        1
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                if self.plan.should_drop(&bufs[i][..m.len]) {
                    continue;
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                    meta[kept] = m;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }
}

//! The engine's sockets and system calls: binding the one media port, `recvmmsg(2)` into a
//! fixed set of buffers, `sendmmsg(2)` of a batch, `epoll(7)` and the `eventfd(2)` that wakes
//! the engine for commands. Everything here is allocated once; nothing per packet.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bytes::BytesMut;

/// Datagrams read or written per system call.
pub(crate) const BATCH: usize = 64;
/// Larger than any datagram a WebRTC peer sends (1500-byte MTU, and headroom for jumbo).
const RECV_BUF: usize = 2048;
/// A media server's socket needs room for bursts (keyframes to many, handshakes of many).
const SOCKET_BUFFER: usize = 8 << 20;

/// Binds `ip:port` for media, non-blocking, with large buffers. Port 0 takes any free port.
pub(crate) fn bind_udp(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, port))?;
    socket.set_nonblocking(true)?;
    let s = socket2::SockRef::from(&socket);
    // Best effort: the kernel caps these at net.core.[rw]mem_max (README: raise it).
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    Ok(socket)
}

/// The IPv4/IPv6 addresses of this machine's interfaces that are up (for `0.0.0.0` / `::` in
/// `media.bind_ips`: the engine binds each one, so every datagram's local address is known).
pub(crate) fn interface_addresses(v6: bool) -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if family == libc::AF_INET && !v6 {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ));
        } else if family == libc::AF_INET6 && v6 {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            if sin6.sin6_scope_id == 0 {
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

fn to_storage(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let s = socket2::SockAddr::from(addr);
    // SAFETY: SockAddr holds a valid sockaddr of `len` bytes; sockaddr_storage is large enough.
    unsafe {
        std::ptr::copy_nonoverlapping(
            s.as_ptr() as *const u8,
            out as *mut libc::sockaddr_storage as *mut u8,
            s.len() as usize,
        );
    }
    s.len()
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(
                IpAddr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// Buffers for one `recvmmsg` call, reused for every call.
pub(crate) struct RecvBatch {
    bufs: Vec<[u8; RECV_BUF]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
}

// SAFETY: the raw pointers inside point into the batch's own vectors; it moves as a whole.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let zeroed_addr: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let zeroed_msg: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut b = RecvBatch {
            bufs: vec![[0u8; RECV_BUF]; BATCH],
            addrs: vec![zeroed_addr; BATCH],
            iovs: Vec::with_capacity(BATCH),
            msgs: vec![zeroed_msg; BATCH],
            len: 0,
        };
        for i in 0..BATCH {
            b.iovs.push(libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: RECV_BUF,
            });
        }
        for i in 0..BATCH {
            let m = &mut b.msgs[i].msg_hdr;
            m.msg_name = &mut b.addrs[i] as *mut _ as *mut libc::c_void;
            m.msg_iov = &mut b.iovs[i];
            m.msg_iovlen = 1;
        }
        b
    }

    /// Reads up to `BATCH` datagrams; 0 when nothing is waiting.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for m in &mut self.msgs {
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: every mmsghdr points at this batch's own live buffers and addresses.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.len = 0;
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.len = n as usize;
        Ok(self.len)
    }

    /// The `i`-th datagram of the last `recv`: its sender and bytes. Truncated datagrams
    /// (larger than the buffer) are reported as `None`.
    pub(crate) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.len {
            return None;
        }
        let m = &self.msgs[i];
        if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let from = from_storage(&self.addrs[i])?;
        Some((from, &self.bufs[i][..m.msg_len as usize]))
    }
}

/// Datagrams waiting for one `sendmmsg`, with their destinations. The buffers are the ones
/// `rtc` or the engine produced; they are given back for reuse after the send.
pub(crate) struct SendBatch {
    datagrams: Vec<(SocketAddr, BytesMut)>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    /// Datagrams the kernel refused (a full socket buffer): dropped, counted by the caller.
    pub(crate) refused: u64,
    pub(crate) sent: u64,
}

// SAFETY: the raw pointers are rebuilt before every send from the batch's own vectors.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        // SAFETY: all-zero is a valid sockaddr_storage and mmsghdr.
        let zeroed_addr: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let zeroed_msg: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        SendBatch {
            datagrams: Vec::with_capacity(BATCH),
            addrs: vec![zeroed_addr; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            msgs: vec![zeroed_msg; BATCH],
            refused: 0,
            sent: 0,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.datagrams.len() >= BATCH
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    pub(crate) fn push(&mut self, to: SocketAddr, data: BytesMut) {
        self.datagrams.push((to, data));
    }

    /// Sends everything queued on `fd`; buffers go back to `pool` (bounded by the caller).
    pub(crate) fn flush(&mut self, fd: RawFd, pool: &mut Vec<BytesMut>) {
        let n = self.datagrams.len();
        if n == 0 {
            return;
        }
        for (i, (to, data)) in self.datagrams.iter().enumerate() {
            let len = to_storage(*to, &mut self.addrs[i]);
            self.iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let m = &mut self.msgs[i].msg_hdr;
            m.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            m.msg_namelen = len;
            m.msg_iov = &mut self.iovs[i];
            m.msg_iovlen = 1;
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
        let mut off = 0;
        while off < n {
            // SAFETY: msgs[off..n] are initialised and point at live buffers in `datagrams`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[off..n].as_mut_ptr(),
                    (n - off) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                off += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // EAGAIN (socket buffer full) or an error for the first datagram (e.g. an address
            // that is unreachable): that one is lost, the rest still go.
            self.refused += 1;
            off += 1;
        }
        self.sent += n as u64;
        for (_, mut data) in self.datagrams.drain(..) {
            if pool.len() < pool.capacity() {
                data.clear();
                pool.push(data);
            }
        }
    }
}

/// The engine's wake-up: commands are queued, then the eventfd is written; epoll reports it.
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter (never in
        // practice) only means the engine is already due to wake.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Resets the counter after a wake-up.
    pub(crate) fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our eventfd.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A level-triggered epoll set of the engine's descriptors, each tagged with a token.
pub(crate) struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event; `fd` is open.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn remove(&self, fd: RawFd) {
        // SAFETY: removing a descriptor from our own epoll set; errors only mean it was gone.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns the ready tokens.
    pub(crate) fn wait(&mut self, timeout_ms: i32, ready: &mut Vec<u64>) {
        ready.clear();
        // SAFETY: `events` is a live buffer of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        for ev in self.events.iter().take(n.max(0) as usize) {
            ready.push(ev.u64);
        }
    }
}

//! The engine's forwarding path allocates nothing per packet: a counting global allocator
//! watches ~10 000 packets fanned out to 100 subscribers each through the engine core's own
//! fan-out (`sfu::testing::Fanout`: track cache, admit, `seal_and_queue` into a pooled buffer,
//! the transmit queue, buffers given back as the shell does after `sendmmsg`). Counting
//! allocations is deterministic, unlike timing, so this is a test. The pool holds
//! `engine::core::POOL` buffers: a packet's fan-out to more subscribers than that would
//! allocate the extra buffers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kursrelay::sfu::testing::Fanout;
use rtc::rtp;

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn forwarding_allocates_nothing_per_packet() {
    // Both profiles: GCM (webrtc-rs, Firefox) and AES-CM + HMAC-SHA1 (Chromium).
    // (AES-CM's counter mode and HMAC are generic code, compiled unoptimised in a debug
    // build: fewer rounds keep the test well under libtest's 60-second notice, which itself
    // allocates on another thread and would be counted.)
    allocates_nothing(Fanout::new(100), 160);
    allocates_nothing(Fanout::new_aes_cm(100), 2);
}

fn allocates_nothing(mut harness: Fanout, rounds: usize) {
    let packets: Vec<rtp::Packet> = (0..64u16)
        .map(|seq| rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                ssrc: 7,
                ..Default::default()
            },
            payload: Bytes::from(vec![0x10u8; 1000]),
        })
        .collect();
    // Warm-up: the first keyframe starts every down-track; the pool, the transmit queue and
    // the track cache reach their size.
    for p in &packets {
        harness.forward(p);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut forwarded = 0;
    for _ in 0..rounds {
        for p in &packets[..62] {
            forwarded += harness.forward(p);
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert!(
        forwarded as usize >= rounds * 6_100,
        "only {forwarded} forwarded"
    );
    println!("{allocations} allocations for {forwarded} forwarded packets");
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations for {forwarded} forwarded packets"
    );
}

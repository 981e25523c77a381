//! Our part of the forwarding path allocates nothing per packet: a counting global allocator
//! watches ~10 000 packets rewritten for 100 subscribers each (the engine's per-subscriber
//! work before the packet enters the subscriber's `rtc` sender). Counting allocations is
//! deterministic, unlike timing, so this is a test. The whole engine path, `rtc` included, is
//! measured in BENCHMARKS.md (allocations per forwarded packet).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kursrelay::sfu::FanoutHarness;
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
    // (AES-CM's counter mode is generic code, compiled unoptimised in a debug build: fewer
    // rounds keep the test quick.)
    allocates_nothing(FanoutHarness::new(100), 160);
    allocates_nothing(FanoutHarness::new_aes_cm(100), 16);
}

fn allocates_nothing(mut harness: FanoutHarness, rounds: usize) {
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
    // Warm-up: the first keyframe starts every down-track.
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

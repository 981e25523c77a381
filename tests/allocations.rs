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
    // Every viewer's pacer on (transport-cc), with room: its budget is kept, nothing held.
    allocates_nothing(Fanout::paced(100), 40);
    simulcast_allocates_nothing(Fanout::simulcast(99), 40);
}

/// Simulcast: three layers, each viewer forwarded one of them, VP8 picture ids rewritten, and
/// every viewer moved to another layer each round (at that layer's next keyframe).
fn simulcast_allocates_nothing(mut harness: Fanout, rounds: usize) {
    // Per layer: 48 packets, 8 frames of 6, a keyframe every 4 frames; 15-bit picture ids.
    let layers: Vec<Vec<rtp::Packet>> = (0..3u16)
        .map(|layer| {
            (0..48u16)
                .map(|i| {
                    let frame = i / 6;
                    let start = i % 6 == 0;
                    let pid = 1000 * layer + frame;
                    let mut payload = vec![0u8; 1000];
                    payload[0] = 0x80 | if start { 0x10 } else { 0 };
                    payload[1] = 0xc0;
                    payload[2] = 0x80 | (pid >> 8) as u8;
                    payload[3] = pid as u8;
                    payload[4] = frame as u8;
                    payload[5] = u8::from(frame % 4 != 0);
                    rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: 96,
                            sequence_number: 10_000 * layer + i,
                            timestamp: 3000 * u32::from(frame) + 100_000 * u32::from(layer),
                            ssrc: 7 + u32::from(layer),
                            ..Default::default()
                        },
                        payload: Bytes::from(payload),
                    }
                })
                .collect()
        })
        .collect();
    let send = |harness: &mut Fanout| {
        let mut n = 0;
        for i in 0..48 {
            for layer in &layers {
                n += harness.forward_layer(layer[0].header.ssrc as u8 - 7, &layer[i]);
            }
        }
        n
    };
    // Warm-up: every layer's cache, the pool and the queue reach their size.
    send(&mut harness);
    harness.retarget(1);
    send(&mut harness);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let switches_before = harness.layer_switches();
    let mut forwarded = 0;
    for round in 0..rounds {
        harness.retarget(round + 2);
        forwarded += send(&mut harness);
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    let switches = harness.layer_switches() - switches_before;
    println!("simulcast: {allocations} allocations for {forwarded} forwarded packets, {switches} switches");
    assert!(
        switches >= rounds as u64 * 99,
        "only {switches} layer switches"
    );
    assert!(
        forwarded as usize >= rounds * 99 * 30,
        "only {forwarded} forwarded"
    );
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations for {forwarded} forwarded simulcast packets"
    );
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

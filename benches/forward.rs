//! Micro-benchmarks of the engine's fan-out, through the engine core itself
//! (`sfu::testing::Fanout`): track cache, keyframe check, admit, header write + SRTP seal in
//! place into a pooled buffer, the transmit queue, the buffer given back — AES-128-GCM (what
//! the server prefers and browsers get) and AES-128-CM + HMAC-SHA1-80 (a client without GCM)
//! — for 1 and 100 subscribers, without a network; `forward_paced` is GCM with every viewer's
//! pacer on (with room: its budget kept per packet, nothing held). The send (`sendmmsg`) is not in here: the
//! fan-out load generator measures the whole path.
//!
//! `cargo bench --bench forward`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kursrelay::sfu::testing::Fanout;
use rtc::rtp;

fn packet(seq: u16) -> rtp::Packet {
    let mut payload = vec![0xa5u8; 1100];
    payload[0] = 0x10;
    payload[1] = 0x01;
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: seq as u32 * 3000,
            ssrc: 42,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

fn forward(c: &mut Criterion) {
    for (name, make) in [
        ("forward", Fanout::new as fn(usize) -> Fanout),
        ("forward_aes_cm", Fanout::new_aes_cm),
        ("forward_paced", Fanout::paced),
    ] {
        let mut group = c.benchmark_group(name);
        for subscribers in [1usize, 100] {
            let mut harness = make(subscribers);
            let packets: Vec<rtp::Packet> = (0..256).map(packet).collect();
            // One element = one packet forwarded to one subscriber.
            group.throughput(Throughput::Elements(subscribers as u64));
            group.bench_with_input(
                BenchmarkId::from_parameter(subscribers),
                &subscribers,
                |b, _| {
                    let mut i = 0usize;
                    b.iter(|| {
                        i = i.wrapping_add(1);
                        harness.forward(&packets[i % 256])
                    });
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);

//! Batch framing of internal links: `encode_batch` runs once per link write
//! on the routing side, `decode_batch` once per received link message on
//! the chat server. Each delivery names 10 recipients and carries a
//! ~200-byte message frame, like the fan-out benchmark's rooms of 10.
//! `group_by_server` is the fan-out grouping, once per routed message: the
//! room's online sessions (10, or the big room's 5,000) over 2 servers.
//!
//! `cargo bench -p chat-routing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use chat_routing::delivery::{decode_batch, encode_batch};
use chat_routing::router::group_by_server;
use chat_routing::Delivery;
use chat_store::OnlineSession;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn deliveries(n: usize) -> Vec<Arc<Delivery>> {
    (0..n)
        .map(|i| {
            let room = format!("r_01JD2Z8Q4K3M5N6P7Q8R{i:06}");
            let frame = format!(
                r#"{{"type":"message","room":"{room}","seq":{seq},"id":"m_01JD2Z8Q4K3M5N6P7Q8R9S{i:06}","from":"bench-u{i}","body":"0.1234567890.{i}","ts":1732600000000,"client_msg_id":null}}"#,
                seq = 1000 + i
            );
            Arc::new(Delivery {
                room,
                seq: 1000 + i as u64,
                users: (0..10).map(|u| format!("bench-u{}", i * 10 + u)).collect(),
                frame: Arc::from(frame),
                ts_ms: 1_732_600_000_000,
            })
        })
        .collect()
}

fn batches(c: &mut Criterion) {
    let mut enc = c.benchmark_group("encode_batch");
    for n in [1usize, 64, 512] {
        let batch = deliveries(n);
        enc.throughput(Throughput::Elements(n as u64));
        enc.bench_with_input(BenchmarkId::from_parameter(n), &batch, |b, batch| {
            b.iter(|| encode_batch(black_box(batch)))
        });
    }
    enc.finish();

    let mut dec = c.benchmark_group("decode_batch");
    for n in [1usize, 64, 512] {
        let text = encode_batch(&deliveries(n));
        assert_eq!(decode_batch(&text).unwrap().len(), n);
        dec.throughput(Throughput::Elements(n as u64));
        dec.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| decode_batch(black_box(text)))
        });
    }
    dec.finish();
}

fn grouping(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_by_server");
    for n in [10usize, 1000, 5000] {
        let online: Vec<OnlineSession> = (0..n)
            .map(|i| OnlineSession {
                user: format!("bench-u{i}"),
                session: format!("s_{i:032}"),
                server_id: format!("bench-chat-{}", i % 2),
            })
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &online, |b, online| {
            b.iter(|| group_by_server(black_box(online), None).len())
        });
    }
    group.finish();
}

criterion_group!(benches, batches, grouping);
criterion_main!(benches);

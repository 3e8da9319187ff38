//! `PlacementPolicy::choose`: runs under a lock on every `POST /v1/connect`,
//! over the cached snapshot of live chat servers.
//!
//! `cargo bench -p api-server -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use api_server::placement::PlacementPolicy;
use chat_protocol::rest::ServerState;
use chat_store::{ServerHealth, ServerSnapshot};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn servers(n: usize) -> Vec<ServerSnapshot> {
    (0..n)
        .map(|i| ServerSnapshot {
            health: ServerHealth {
                id: format!("chat-{i:04}"),
                url: format!("ws://10.0.{}.{}:9001/ws", i / 256, i % 256),
                internal_url: format!("ws://10.0.{}.{}:9001/internal/link", i / 256, i % 256),
                // Every 16th server draining, the rest ready.
                state: if i % 16 == 15 {
                    ServerState::Draining
                } else {
                    ServerState::Ready
                },
                // Scrambled so the minimum is not at either end.
                connections: ((i * 7919) % 1000) as u64 + 100,
                load: ((i * 31) % 100) as f64 / 100.0,
                last_seen_ms: 1_732_600_000_000,
                tickets_in_own_slot: true,
                tracks_used_tickets: true,
            },
            pending_tickets: (i % 5) as u64,
        })
        .collect()
}

fn choose(c: &mut Criterion) {
    let policy = PlacementPolicy::default();
    let mut g = c.benchmark_group("placement_choose");
    for n in [2usize, 16, 256] {
        let list = servers(n);
        assert!(policy.choose(&list).is_some());
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &list, |b, list| {
            b.iter(|| policy.choose(black_box(list)).map(|s| s.health.id.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, choose);
criterion_main!(benches);

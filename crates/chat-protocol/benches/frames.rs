//! Hot paths of the client contract: parsing a `send` frame (every message a
//! client sends) and serialising a `message` frame (once per stored message;
//! the text is then shared by every recipient).
//!
//! `cargo bench -p chat-protocol -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use chat_protocol::{ClientFrame, Limits, Message, ServerFrame};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn send_frame(body_len: usize) -> String {
    let body = "x".repeat(body_len);
    format!(
        r#"{{"type":"send","room":"r_01JD2Z8Q4K3M5N6P7Q8R9S0T1V","body":"{body}","client_msg_id":"c-000123"}}"#
    )
}

fn parse_send(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_send");
    for (name, len) in [("small_16B", 16usize), ("body_4KiB", 4096)] {
        let text = send_frame(len);
        assert!(matches!(
            ClientFrame::parse(&text, &limits),
            Ok(ClientFrame::Send { .. })
        ));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &text, |b, text| {
            b.iter(|| ClientFrame::parse(black_box(text), &limits))
        });
    }
    g.finish();
}

fn serialise_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("message_to_json");
    for (name, len) in [("small_16B", 16usize), ("body_4KiB", 4096)] {
        let frame = ServerFrame::Message(Message {
            room: "r_01JD2Z8Q4K3M5N6P7Q8R9S0T1V".into(),
            seq: 123_456,
            id: "m_01JD2Z8Q4K3M5N6P7Q8R9S0T1W".into(),
            from: "user-000042".into(),
            body: "x".repeat(len),
            ts: 1_732_600_000_000,
            client_msg_id: Some("c-000123".into()),
        });
        g.throughput(Throughput::Bytes(frame.to_json().len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &frame, |b, frame| {
            b.iter(|| black_box(frame).to_json())
        });
    }
    g.finish();
}

criterion_group!(benches, parse_send, serialise_message);
criterion_main!(benches);

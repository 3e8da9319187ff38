//! `bigroom`: one room of M members, all connected (spread over the chat
//! servers by placement); one member sends K messages one at a time, each
//! after the previous one reached every member. The fan-out time of a
//! message is from its send to its arrival at the last member.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::{
    self, check_fd_limit, error_chain, truncate, ErrorLog, Frame, SendFrame, SeqVerdict, SeqWindow,
    WsStream,
};
use crate::stats::{ms, new_histogram, Sharded, Summary};
use crate::Ctx;

#[derive(clap::Args, Debug)]
pub struct BigroomArgs {
    /// Members of the room, all connected.
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Messages to send, one at a time.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Longest wait for one message to reach every member.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_s: f64,
    /// Pad message bodies to at least this many bytes.
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
}

struct Shared {
    epoch: Instant,
    members: u32,
    received: Vec<AtomicU32>,
    first_us: Vec<AtomicU64>,
    last_us: Vec<AtomicU64>,
    ack_us: Vec<AtomicU64>,
    /// The message being sent now (acks carry no body).
    current: AtomicUsize,
    acked: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    foreign: AtomicU64,
    disconnects: AtomicU64,
    closing: AtomicBool,
    latency: Sharded,
    errors: ErrorLog,
    all_in: Notify,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

pub async fn run(ctx: &Ctx, args: BigroomArgs) -> Result<()> {
    let m = args.members;
    let k = args.messages;
    if m == 0 || k == 0 {
        bail!("--members and --messages must be at least 1");
    }
    check_fd_limit(m + 64);
    println!(
        "bigroom: run {} against {}: one room of {m} members, {k} messages one at a time",
        ctx.run_id, ctx.api_base
    );
    let users: Vec<String> = (0..m).map(|i| format!("{}-m{i}", ctx.run_id)).collect();
    let tokens = client::mint_tokens(&ctx.api, &users, ctx.setup_concurrency).await?;
    let started = Instant::now();
    let room = client::create_room(
        &ctx.api,
        &tokens[0],
        &format!("{}-big", ctx.run_id),
        &users[1..],
        ctx.setup_concurrency,
    )
    .await?;
    eprintln!(
        "setup: room of {m} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sessions = client::connect_all(&ctx.api, &tokens, ctx.setup_concurrency).await?;
    let placement = client::placement(&sessions);
    println!("placement: {placement:?}");

    let shared = Arc::new(Shared {
        epoch: ctx.epoch,
        members: m as u32,
        received: (0..k).map(|_| AtomicU32::new(0)).collect(),
        first_us: (0..k).map(|_| AtomicU64::new(u64::MAX)).collect(),
        last_us: (0..k).map(|_| AtomicU64::new(0)).collect(),
        ack_us: (0..k).map(|_| AtomicU64::new(0)).collect(),
        current: AtomicUsize::new(0),
        acked: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        latency: Sharded::new(8),
        errors: ErrorLog::default(),
        all_in: Notify::new(),
    });
    let room: Arc<str> = room.into();
    let mut sinks = Vec::with_capacity(m);
    let mut readers = Vec::with_capacity(m);
    for (i, s) in sessions.into_iter().enumerate() {
        let (sink, stream) = s.ws.split();
        sinks.push(Arc::new(tokio::sync::Mutex::new(sink)));
        readers.push(tokio::spawn(reader(
            shared.clone(),
            i,
            stream,
            room.clone(),
        )));
    }

    let pad = if args.body_bytes > 24 {
        format!(".{}", "x".repeat(args.body_bytes - 24))
    } else {
        String::new()
    };
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let mut fanout = new_histogram();
    let mut sent = 0u64;
    let mut incomplete = 0u64;
    for i in 0..k {
        shared.current.store(i, Relaxed);
        let t_us = shared.now_us();
        let body = format!("{i}.{t_us}{pad}");
        let frame = SendFrame::new(&room, &body).to_message();
        if let Err(e) = sinks[0].lock().await.send(frame).await {
            shared
                .errors
                .note(format!("send failed: {}", error_chain(e)));
            break;
        }
        sent += 1;
        let deadline = Instant::now() + timeout;
        loop {
            if shared.received[i].load(Relaxed) >= shared.members {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, shared.all_in.notified()).await;
        }
        let got = shared.received[i].load(Relaxed);
        let last = shared.last_us[i].load(Relaxed).saturating_sub(t_us);
        let first = shared.first_us[i].load(Relaxed).saturating_sub(t_us);
        let ack = shared.ack_us[i].load(Relaxed);
        let ack = if ack == 0 {
            "-".into()
        } else {
            ms(ack.saturating_sub(t_us))
        };
        if got >= shared.members {
            let _ = fanout.record(last.max(1));
            println!(
                "  message {:>3}: {got}/{m} members in {} ms (first {} ms, ack {} ms)",
                i + 1,
                ms(last),
                ms(first),
                ack
            );
        } else {
            incomplete += 1;
            println!(
                "  message {:>3}: only {got}/{m} members after {} s (ack {} ms)",
                i + 1,
                args.timeout_s,
                ack
            );
        }
    }
    // Stragglers and duplicates have a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let acked = shared.acked.load(Relaxed);
    let delivered: u64 = shared.received.iter().map(|r| r.load(Relaxed) as u64).sum();
    let expected = acked * m as u64;
    let fan = Summary::of(&fanout);
    let lat = Summary::of(&shared.latency.merged());
    println!(
        "  sent {sent}  acked {acked}  expected deliveries {expected}  delivered {delivered}  lost {}  \
         duplicated {}  incomplete messages {incomplete}",
        expected.saturating_sub(delivered),
        shared.duplicated.load(Relaxed)
    );
    println!("  fan-out time (send -> last member) ms: {}", fan.line_ms());
    println!("  per-delivery latency ms: {}", lat.line_ms());
    if shared.errors.count() > 0 {
        println!(
            "  errors {}; first: {:?}",
            shared.errors.count(),
            shared.errors.first()
        );
    }
    let result = serde_json::json!({
        "scenario": "bigroom",
        "run_id": ctx.run_id,
        "members": m,
        "messages": k,
        "body_bytes": args.body_bytes,
        "sent": sent,
        "acked": acked,
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "duplicated": shared.duplicated.load(Relaxed),
        "out_of_order": shared.out_of_order.load(Relaxed),
        "incomplete": incomplete,
        "fanout_us": fan,
        "latency_us": lat,
        "disconnects": shared.disconnects.load(Relaxed),
        "foreign": shared.foreign.load(Relaxed),
        "errors": shared.errors.count(),
        "first_errors": shared.errors.first(),
        "servers": placement,
    });
    println!("RESULT {}", serde_json::to_string(&result)?);

    shared.closing.store(true, Relaxed);
    client::close_all(sinks).await;
    for r in readers {
        r.abort();
    }
    Ok(())
}

async fn reader(shared: Arc<Shared>, idx: usize, mut stream: WsStream, room: Arc<str>) {
    let mut window = SeqWindow::default();
    loop {
        let why = match stream.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                on_frame(&shared, idx, text.as_str(), &room, &mut window);
                continue;
            }
            Some(Ok(WsMessage::Close(frame))) => format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => format!("read error: {}", error_chain(e)),
            None => "connection ended".to_owned(),
        };
        if !shared.closing.load(Relaxed) {
            shared.disconnects.fetch_add(1, Relaxed);
            shared.errors.note(format!("connection {idx}: {why}"));
        }
        return;
    }
}

fn on_frame(shared: &Shared, idx: usize, text: &str, room: &str, window: &mut SeqWindow) {
    let frame: Frame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            shared
                .errors
                .note(format!("unparseable frame ({e}): {}", truncate(text, 200)));
            return;
        }
    };
    match &*frame.kind {
        "message" => {
            let now = shared.now_us();
            let parsed = frame.body.as_deref().and_then(|b| {
                let mut parts = b.splitn(3, '.');
                let i: usize = parts.next()?.parse().ok()?;
                let t: u64 = parts.next()?.parse().ok()?;
                Some((i, t))
            });
            let (Some(seq), Some((i, t_us)), true) =
                (frame.seq, parsed, frame.room.as_deref() == Some(room))
            else {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            };
            if i >= shared.received.len() {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            }
            match window.observe(seq) {
                SeqVerdict::Duplicate => {
                    shared.duplicated.fetch_add(1, Relaxed);
                    return;
                }
                SeqVerdict::OutOfOrder => {
                    shared.out_of_order.fetch_add(1, Relaxed);
                }
                SeqVerdict::InOrder { .. } => {}
            }
            shared.latency.record(idx, now.saturating_sub(t_us));
            shared.first_us[i].fetch_min(now, Relaxed);
            shared.last_us[i].fetch_max(now, Relaxed);
            if shared.received[i].fetch_add(1, Relaxed) + 1 == shared.members {
                shared.all_in.notify_one();
            }
        }
        "ack" => {
            let i = shared.current.load(Relaxed);
            shared.acked.fetch_add(1, Relaxed);
            if let Some(a) = shared.ack_us.get(i) {
                a.store(shared.now_us(), Relaxed);
            }
        }
        "error" => shared.errors.note(format!(
            "error frame on connection {idx}: {}: {}",
            frame.code.as_deref().unwrap_or("?"),
            frame.message.as_deref().unwrap_or("")
        )),
        "reconnect" => shared.errors.note(format!(
            "reconnect frame on connection {idx}: {}",
            frame.reason.as_deref().unwrap_or("")
        )),
        _ => {}
    }
}

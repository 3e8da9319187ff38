//! `fanout`: many rooms of M members, S senders per room, open-loop paced
//! sends at a total offered rate, end-to-end latency measured by every
//! receiver from the send time embedded in the body.
//!
//! Each step (one per rate) runs `warmup + duration` seconds on the same
//! connections, then waits up to `drain` seconds for the missing acks and
//! deliveries before counting losses. A message body is
//! `<step>.<scheduled send time, µs since the run's epoch>.<n>[.<padding>]`,
//! so deliveries are attributed to their step even when they arrive late.
//! The timestamp is the *scheduled* send time, so a sender that falls
//! behind (client or server saturated) shows up as latency rather than as a
//! silently lower rate (no coordinated omission).
//!
//! `--protocol socketio` runs the same scenario against the Socket.IO peer
//! (`bench/socketio/server.js`, see [`crate::socketio`]): no REST setup,
//! rooms are named in the handshake, connections alternate between the
//! `--socketio-urls`. The peer has no seq and no ack, so a send counts as
//! expected deliveries once written, and loss, duplicates and order are
//! checked with the per-sender counter `n` of the body.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::{
    self, check_fd_limit, error_chain, truncate, ErrorLog, Frame, SendFrame, SeqVerdict, SeqWindow,
    Ws, WsSink, WsStream,
};
use crate::socketio;
use crate::stats::{ms, Sharded, Summary};
use crate::Ctx;

/// Which server and wire protocol the scenario drives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Our chat service: REST setup through --api, the public WebSocket
    /// contract (send / ack / message with seq).
    Chat,
    /// The Socket.IO peer (bench/socketio): Engine.IO v4 over WebSocket,
    /// rooms joined from the handshake auth, `send` -> room `message`.
    Socketio,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Chat => "chat",
            Protocol::Socketio => "socketio",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Server to drive: `chat` (ours) or `socketio` (the peer).
    #[arg(long, value_enum, default_value = "chat")]
    pub protocol: Protocol,
    /// With --protocol socketio: the peer's servers; connection i goes to
    /// the (i mod n)-th.
    #[arg(
        long,
        env = "CHAT_BENCH_SOCKETIO_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9101,http://127.0.0.1:9102"
    )]
    pub socketio_urls: Vec<String>,
    /// WebSocket connections, one user each.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Members per room (every member receives every message of its room,
    /// its own included). The last room is smaller if this does not divide
    /// --connections.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Members of each room that send.
    #[arg(long, default_value_t = 1)]
    pub senders_per_room: usize,
    /// Total offered send rate in messages per second, over all senders
    /// (open loop: sends follow a schedule, not the acks).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Step through these total rates on the same connections, one result
    /// per rate (overrides --rate). Example: --rates 2000,5000,10000
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Measured seconds per step (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Warm-up seconds at the start of each step, sent but not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Longest wait after each step for missing acks and deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain_s: f64,
    /// Pad message bodies to at least this many bytes (0: no padding, about
    /// 20 bytes).
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Give every send a `client_msg_id`, as the SDK and the CLI always do
    /// (so the server keeps a dedup record per message); `false` sends
    /// none, as the runs before 2026-12-02 did.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub client_msg_ids: bool,
}

/// Counters of one step. Everything is attributed by the step number in the
/// message body (deliveries) or in the sender's queue of unacked sends.
struct Step {
    rate: f64,
    /// Measured window, µs since the epoch: latency is recorded for
    /// messages *scheduled* in it, throughput counts *arrivals* in it.
    from_us: AtomicU64,
    to_us: AtomicU64,
    sent: AtomicU64,
    send_failed: AtomicU64,
    late_sends: AtomicU64,
    max_lag_us: AtomicU64,
    acked: AtomicU64,
    acked_in_window: AtomicU64,
    send_errors: AtomicU64,
    expected: AtomicU64,
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    seq_gaps: AtomicU64,
    latency: Sharded,
    ack_latency: Sharded,
}

impl Step {
    fn new(rate: f64) -> Step {
        Step {
            rate,
            from_us: AtomicU64::new(u64::MAX),
            to_us: AtomicU64::new(u64::MAX),
            sent: AtomicU64::new(0),
            send_failed: AtomicU64::new(0),
            late_sends: AtomicU64::new(0),
            max_lag_us: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_in_window: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            latency: Sharded::new(8),
            ack_latency: Sharded::new(8),
        }
    }

    fn in_window(&self, us: u64) -> bool {
        us >= self.from_us.load(Relaxed) && us < self.to_us.load(Relaxed)
    }

    /// Counts a message that connection `idx` received at `now_us`, sent
    /// (scheduled) at `sent_us`, by its place in the sender's sequence.
    /// Duplicates count only as duplicates.
    fn record_delivery(&self, idx: usize, verdict: SeqVerdict, sent_us: u64, now_us: u64) {
        match verdict {
            SeqVerdict::Duplicate => {
                self.duplicated.fetch_add(1, Relaxed);
                return;
            }
            SeqVerdict::OutOfOrder => {
                self.out_of_order.fetch_add(1, Relaxed);
            }
            SeqVerdict::InOrder { gap } => {
                if gap > 0 {
                    self.seq_gaps.fetch_add(gap, Relaxed);
                }
            }
        }
        self.delivered.fetch_add(1, Relaxed);
        if self.in_window(sent_us) {
            self.latency.record(idx, now_us.saturating_sub(sent_us));
        }
        if self.in_window(now_us) {
            self.delivered_in_window.fetch_add(1, Relaxed);
        }
    }
}

struct Shared {
    epoch: Instant,
    steps: Vec<Step>,
    /// Messages that are not ours or not for the connection's room.
    foreign: AtomicU64,
    unexpected_acks: AtomicU64,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    closing: AtomicBool,
    errors: ErrorLog,
    client_msg_ids: bool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Sends not yet acked on one connection: (step, scheduled µs). The server
/// answers one connection's sends in order, so acks pop from the front.
type Pending = Arc<Mutex<VecDeque<(u32, u64)>>>;

struct Conn {
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    pending: Pending,
    room: Arc<str>,
    room_size: u64,
}

pub async fn run(ctx: &Ctx, args: FanoutArgs) -> Result<()> {
    let c = args.connections;
    let m = args.room_size.max(1).min(c.max(1));
    if c == 0 {
        bail!("--connections must be at least 1");
    }
    let rates = if args.rates.is_empty() {
        vec![args.rate]
    } else {
        args.rates.clone()
    };
    if rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("rates must be positive numbers");
    }
    if !(args.duration_s > 0.0 && args.warmup_s >= 0.0 && args.drain_s >= 0.0) {
        bail!("--duration-s must be positive, --warmup-s and --drain-s not negative");
    }
    check_fd_limit(c + 64);

    // Layout: room r holds connections [r*m, min((r+1)*m, c)).
    let rooms = c.div_ceil(m);
    let room_of = |i: usize| i / m;
    let room_len = |r: usize| (c - r * m).min(m);
    let s = args.senders_per_room.max(1);
    let sender_idx: Vec<usize> = (0..rooms)
        .flat_map(|r| (r * m..r * m + s.min(room_len(r))).collect::<Vec<_>>())
        .collect();

    let proto = args.protocol;
    let target = match proto {
        Protocol::Chat => ctx.api_base.clone(),
        Protocol::Socketio => {
            if args.socketio_urls.is_empty() {
                bail!("--socketio-urls is empty");
            }
            format!("Socket.IO peer {}", args.socketio_urls.join(","))
        }
    };
    println!(
        "fanout: run {} ({}) against {}: {c} connections, {rooms} rooms of {m}, {} senders, rates {:?}/s, \
         {}s warm-up + {}s measured per step",
        ctx.run_id,
        proto.name(),
        target,
        sender_idx.len(),
        rates,
        args.warmup_s,
        args.duration_s
    );

    let users: Vec<String> = (0..c).map(|i| format!("{}-u{i}", ctx.run_id)).collect();
    let (room_ids, sessions): (Vec<String>, Vec<(Ws, String)>) = match proto {
        Protocol::Chat => setup_chat(ctx, &users, m, rooms).await?,
        Protocol::Socketio => setup_socketio(ctx, &args.socketio_urls, &users, m).await?,
    };
    let mut placement = std::collections::BTreeMap::<String, usize>::new();
    for (_, server) in &sessions {
        *placement.entry(server.clone()).or_insert(0) += 1;
    }
    // The servers a room's members are spread over, on average: each
    // message crosses to every one of them but the sender's.
    let servers_per_room = {
        let mut per_room = vec![std::collections::BTreeSet::new(); rooms];
        for (i, (_, server)) in sessions.iter().enumerate() {
            per_room[room_of(i)].insert(server.as_str());
        }
        let spread: usize = per_room.iter().map(|servers| servers.len()).sum();
        (spread as f64 / rooms as f64 * 100.0).round() / 100.0
    };
    println!("placement: {placement:?}, {servers_per_room} servers per room");

    let shared = Arc::new(Shared {
        epoch: ctx.epoch,
        steps: rates.iter().map(|r| Step::new(*r)).collect(),
        foreign: AtomicU64::new(0),
        unexpected_acks: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        errors: ErrorLog::default(),
        client_msg_ids: args.client_msg_ids,
    });
    let room_ids: Vec<Arc<str>> = room_ids.into_iter().map(Arc::from).collect();
    let mut conns = Vec::with_capacity(c);
    let mut readers = Vec::with_capacity(c);
    for (i, (ws, _)) in sessions.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let room = room_ids[room_of(i)].clone();
        let room_size = room_len(room_of(i)) as u64;
        let pending: Pending = Arc::default();
        readers.push(tokio::spawn(reader(
            shared.clone(),
            proto,
            i,
            stream,
            sink.clone(),
            room.clone(),
            room_size,
            pending.clone(),
        )));
        conns.push(Conn {
            sink,
            pending,
            room,
            room_size,
        });
    }

    let pad: Arc<str> = if args.body_bytes > 24 {
        format!(".{}", "x".repeat(args.body_bytes - 24)).into()
    } else {
        "".into()
    };
    let mut results = Vec::new();
    for (step_no, rate) in rates.iter().enumerate() {
        let step = &shared.steps[step_no];
        let cpu_before = client::own_cpu();
        let groups_before = client::group_cpu();
        let start = Instant::now() + Duration::from_millis(100);
        let measure_from = start + Duration::from_secs_f64(args.warmup_s);
        let end = measure_from + Duration::from_secs_f64(args.duration_s);
        step.from_us.store(
            measure_from.duration_since(ctx.epoch).as_micros() as u64,
            Relaxed,
        );
        step.to_us
            .store(end.duration_since(ctx.epoch).as_micros() as u64, Relaxed);
        let per_sender = rate / sender_idx.len() as f64;
        println!(
            "\nstep {}/{}: {rate}/s offered ({per_sender:.2}/s per sender)...",
            step_no + 1,
            rates.len()
        );
        if proto == Protocol::Chat && per_sender > 50.0 {
            println!(
                "  note: {per_sender:.0} sends/s per connection; chat servers refuse sends above \
                 their per-connection limit (CHAT_SEND_RATE_PER_S, 50/s by default) with \
                 rate_limited: add senders (--senders-per-room, --connections) or raise the limit"
            );
        }
        let senders: Vec<_> = sender_idx
            .iter()
            .map(|&i| {
                let conn = &conns[i];
                tokio::spawn(sender(
                    shared.clone(),
                    proto,
                    step_no,
                    conn.sink.clone(),
                    conn.pending.clone(),
                    conn.room.clone(),
                    conn.room_size,
                    per_sender,
                    start,
                    end,
                    pad.clone(),
                ))
            })
            .collect();
        for h in senders {
            let _ = h.await;
        }
        // Drain: wait for the acks and deliveries still in flight.
        let drain_started = Instant::now();
        let drain_until = drain_started + Duration::from_secs_f64(args.drain_s);
        let drained = loop {
            // The Socket.IO peer has no acks: its sends are expected
            // deliveries as soon as they are written.
            let acks_in = proto == Protocol::Socketio
                || step.acked.load(Relaxed) + step.send_errors.load(Relaxed)
                    >= step.sent.load(Relaxed);
            let settled = acks_in && step.delivered.load(Relaxed) >= step.expected.load(Relaxed);
            if settled || Instant::now() >= drain_until {
                break settled;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let drain_ms = drain_started.elapsed().as_millis() as u64;
        let mut result = step_result(
            ctx,
            proto,
            &shared,
            step_no,
            &args,
            (c, rooms, m, sender_idx.len()),
            &placement,
            drain_ms,
        );
        result["drained"] = drained.into();
        result["servers_per_room"] = servers_per_room.into();
        // The load generator's own CPU over the whole step (warm-up, sends,
        // drain), per delivery: what a delivery costs the client side.
        // `*_kernel_cpu_us_per_delivery` is the part of it spent in the
        // kernel: each delivery is a socket write on one side and a read on
        // the other, whoever does them.
        let delivered = step.delivered.load(Relaxed).max(1) as f64;
        if let (Some(a), Some(b)) = (cpu_before, client::own_cpu()) {
            let used = b.since(a);
            result["bench_cpu_ms"] = (used.total_us() / 1000).into();
            result["bench_cpu_us_per_delivery"] = round1(used.total_us() as f64 / delivered).into();
            result["bench_kernel_cpu_us_per_delivery"] =
                round1(used.system_us as f64 / delivered).into();
        }
        // The servers' CPU over the same step, from /proc, by group (ours,
        // Redis, the peer), per delivery: what issue 13 compares.
        let groups = client::group_cpu_delta(&groups_before, &client::group_cpu());
        for (group, used) in &groups {
            result[format!("{group}_cpu_ms")] = (used.total_us() / 1000).into();
            result[format!("{group}_cpu_us_per_delivery")] =
                round1(used.total_us() as f64 / delivered).into();
            result[format!("{group}_kernel_cpu_us_per_delivery")] =
                round1(used.system_us as f64 / delivered).into();
        }
        print_step(&result);
        println!("RESULT {}", serde_json::to_string(&result)?);
        results.push(result);
    }

    if results.len() > 1 {
        print_table(&results);
    }
    shared.closing.store(true, Relaxed);
    client::close_all(conns.into_iter().map(|c| c.sink).collect()).await;
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// Our service: tokens, rooms through REST, sessions through
/// `/v1/connect`. Returns the room ids and (socket, server id) per user.
async fn setup_chat(
    ctx: &Ctx,
    users: &[String],
    m: usize,
    rooms: usize,
) -> Result<(Vec<String>, Vec<(Ws, String)>)> {
    let c = users.len();
    let room_len = |r: usize| (c - r * m).min(m);
    let tokens = client::mint_tokens(&ctx.api, users, ctx.setup_concurrency).await?;
    let started = Instant::now();
    let room_ids = client::run_concurrent((0..rooms).collect(), ctx.setup_concurrency, |r| {
        let api = ctx.api.clone();
        let creator = tokens[r * m].clone();
        let others = users[r * m + 1..r * m + room_len(r)].to_vec();
        let name = format!("{}-room{r}", ctx.run_id);
        async move { client::create_room(&api, &creator, &name, &others, 8).await }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<String>>>()?;
    eprintln!(
        "setup: {rooms} rooms in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sessions = client::connect_all(&ctx.api, &tokens, ctx.setup_concurrency).await?;
    let sessions = sessions.into_iter().map(|s| (s.ws, s.server_id)).collect();
    Ok((room_ids, sessions))
}

/// The Socket.IO peer: room names are ours to choose and are joined in the
/// handshake; connection i goes to `urls[i % urls.len()]`.
async fn setup_socketio(
    ctx: &Ctx,
    urls: &[String],
    users: &[String],
    m: usize,
) -> Result<(Vec<String>, Vec<(Ws, String)>)> {
    let c = users.len();
    let room_ids: Vec<String> = (0..c.div_ceil(m))
        .map(|r| format!("{}-room{r}", ctx.run_id))
        .collect();
    let started = Instant::now();
    let items: Vec<usize> = (0..c).collect();
    let results = client::run_concurrent(items, ctx.setup_concurrency, |i| {
        let url = urls[i % urls.len()].clone();
        let user = users[i].clone();
        let room = room_ids[i / m].clone();
        async move {
            let ws = socketio::open(&url, &user, &[room.as_str()]).await?;
            Ok::<_, anyhow::Error>((ws, url))
        }
    })
    .await;
    let total = results.len();
    let mut sessions = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => sessions.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "connecting to the Socket.IO peer: {} of {total} failed; first errors:\n  {}",
            errors.len(),
            errors
                .iter()
                .take(ErrorLog::KEEP)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    eprintln!(
        "setup: {} Socket.IO sessions connected in {:.1} s",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((room_ids, sessions))
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    shared: Arc<Shared>,
    proto: Protocol,
    step_no: usize,
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    pending: Pending,
    room: Arc<str>,
    room_size: u64,
    rate: f64,
    start: Instant,
    end: Instant,
    pad: Arc<str>,
) {
    let step = &shared.steps[step_no];
    let period = 1.0 / rate;
    // A random phase spreads the senders over the period.
    let phase = rand::random::<f64>() * period;
    // A sender that fell behind gives up on the rest of its schedule one
    // second after the step: the run stays bounded, and the shortfall shows
    // as sent < offered.
    let give_up = end + Duration::from_secs(1);
    let mut k: u64 = 0;
    let mut body = String::with_capacity(48 + pad.len());
    loop {
        let at = start + Duration::from_secs_f64(phase + k as f64 * period);
        if at >= end {
            break;
        }
        let now = Instant::now();
        if now >= give_up {
            break;
        }
        if at > now {
            tokio::time::sleep_until(at.into()).await;
        }
        let lag = Instant::now().saturating_duration_since(at).as_micros() as u64;
        step.max_lag_us.fetch_max(lag, Relaxed);
        if lag > 10_000 {
            step.late_sends.fetch_add(1, Relaxed);
        }
        let t_us = at.duration_since(shared.epoch).as_micros() as u64;
        body.clear();
        use std::fmt::Write;
        let _ = write!(body, "{step_no}.{t_us}.{k}");
        let unique_len = body.len();
        body.push_str(&pad);
        let frame = match proto {
            Protocol::Chat => {
                lock(&pending).push_back((step_no as u32, t_us));
                let mut frame = SendFrame::new(&room, &body);
                if shared.client_msg_ids {
                    // Unique per sender: step, time and count.
                    frame.client_msg_id = Some(&body[..unique_len]);
                }
                frame.to_message()
            }
            Protocol::Socketio => socketio::send_frame(&room, &body),
        };
        step.sent.fetch_add(1, Relaxed);
        if proto == Protocol::Socketio {
            // No ack will come: every member (the sender too) should get it.
            step.expected.fetch_add(room_size, Relaxed);
        }
        let sent = sink.lock().await.send(frame).await;
        if let Err(e) = sent {
            match proto {
                Protocol::Chat => {
                    lock(&pending).pop_back();
                }
                Protocol::Socketio => {
                    step.expected.fetch_sub(room_size, Relaxed);
                }
            }
            step.sent.fetch_sub(1, Relaxed);
            step.send_failed.fetch_add(1, Relaxed);
            if !shared.closing.load(Relaxed) {
                shared
                    .errors
                    .note(format!("send failed: {}", error_chain(e)));
            }
            break;
        }
        k += 1;
    }
}

#[allow(clippy::too_many_arguments)]
async fn reader(
    shared: Arc<Shared>,
    proto: Protocol,
    idx: usize,
    mut stream: WsStream,
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    room: Arc<str>,
    room_size: u64,
    pending: Pending,
) {
    let mut window = SeqWindow::default();
    // Socket.IO: per sender (user name), per step, the body counter.
    let mut windows: HashMap<String, Vec<SeqWindow>> = HashMap::new();
    loop {
        let why = match stream.next().await {
            Some(Ok(WsMessage::Text(text))) if proto == Protocol::Socketio => {
                let pong = on_socketio_packet(&shared, idx, text.as_str(), &room, &mut windows);
                if pong {
                    let r = sink
                        .lock()
                        .await
                        .send(WsMessage::text(socketio::PONG))
                        .await;
                    if let Err(e) = r {
                        if !shared.closing.load(Relaxed) {
                            shared
                                .errors
                                .note(format!("connection {idx}: pong failed: {}", error_chain(e)));
                        }
                    }
                }
                continue;
            }
            Some(Ok(WsMessage::Text(text))) => {
                on_frame(
                    &shared,
                    idx,
                    text.as_str(),
                    &room,
                    room_size,
                    &pending,
                    &mut window,
                );
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

fn on_frame(
    shared: &Shared,
    idx: usize,
    text: &str,
    room: &str,
    room_size: u64,
    pending: &Pending,
    window: &mut SeqWindow,
) {
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
            let (Some(seq), Some(body)) = (frame.seq, frame.body.as_deref()) else {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            };
            if frame.room.as_deref() != Some(room) {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            }
            let Some((step_no, t_us)) = parse_body(body) else {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            };
            let Some(step) = shared.steps.get(step_no) else {
                shared.foreign.fetch_add(1, Relaxed);
                return;
            };
            step.record_delivery(idx, window.observe(seq), t_us, now);
        }
        "ack" => {
            let now = shared.now_us();
            let Some((step_no, t_us)) = lock(pending).pop_front() else {
                shared.unexpected_acks.fetch_add(1, Relaxed);
                return;
            };
            let step = &shared.steps[step_no as usize];
            step.acked.fetch_add(1, Relaxed);
            step.expected.fetch_add(room_size, Relaxed);
            if step.in_window(t_us) {
                step.ack_latency.record(idx, now.saturating_sub(t_us));
            }
            if step.in_window(now) {
                step.acked_in_window.fetch_add(1, Relaxed);
            }
        }
        "error" => {
            // We only send `send` frames, so an error answers the oldest one.
            if let Some((step_no, _)) = lock(pending).pop_front() {
                shared.steps[step_no as usize]
                    .send_errors
                    .fetch_add(1, Relaxed);
            }
            shared.errors.note(format!(
                "error frame on connection {idx}: {}: {}",
                frame.code.as_deref().unwrap_or("?"),
                frame.message.as_deref().unwrap_or("")
            ));
        }
        "reconnect" => {
            shared.reconnects.fetch_add(1, Relaxed);
            shared.errors.note(format!(
                "reconnect frame on connection {idx}: {}",
                frame.reason.as_deref().unwrap_or("")
            ));
        }
        _ => {}
    }
}

/// Handles one Engine.IO packet from the Socket.IO peer; true when it was a
/// ping to answer.
fn on_socketio_packet(
    shared: &Shared,
    idx: usize,
    text: &str,
    room: &str,
    windows: &mut HashMap<String, Vec<SeqWindow>>,
) -> bool {
    let m = match socketio::parse(text) {
        socketio::Packet::Ping => return true,
        socketio::Packet::Message(m) => m,
        socketio::Packet::Bad(e) => {
            shared
                .errors
                .note(format!("unparseable packet ({e}): {}", truncate(text, 200)));
            return false;
        }
        socketio::Packet::Other(p) => {
            // `41` is the server closing the namespace; other packets
            // (noop `6`, unknown events) are ignored.
            if p.starts_with("41") || p.starts_with('1') {
                shared.errors.note(format!(
                    "connection {idx}: closed by the peer: {}",
                    truncate(p, 100)
                ));
            }
            return false;
        }
    };
    let now = shared.now_us();
    if m.room != room {
        shared.foreign.fetch_add(1, Relaxed);
        return false;
    }
    let Some((step_no, t_us, n)) = parse_body_n(&m.body) else {
        shared.foreign.fetch_add(1, Relaxed);
        return false;
    };
    let Some(step) = shared.steps.get(step_no) else {
        shared.foreign.fetch_add(1, Relaxed);
        return false;
    };
    let per_step = match windows.get_mut(&*m.from) {
        Some(w) => w,
        None => windows
            .entry(m.from.clone().into_owned())
            .or_insert_with(|| vec![SeqWindow::default(); shared.steps.len()]),
    };
    // The body counter starts at 0 in each step; a window's seqs start at 1.
    step.record_delivery(idx, per_step[step_no].observe(n + 1), t_us, now);
    false
}

/// `<step>.<t_us>.<n>[.<padding>]` -> (step, t_us).
fn parse_body(body: &str) -> Option<(usize, u64)> {
    parse_body_n(body).map(|(step, t_us, _)| (step, t_us))
}

/// `<step>.<t_us>.<n>[.<padding>]` -> (step, t_us, n).
fn parse_body_n(body: &str) -> Option<(usize, u64, u64)> {
    let mut parts = body.splitn(4, '.');
    let step = parts.next()?.parse().ok()?;
    let t_us = parts.next()?.parse().ok()?;
    let n = parts.next()?.parse().ok()?;
    Some((step, t_us, n))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One step's RESULT object; `layout` is (connections, rooms, room size,
/// senders).
#[allow(clippy::too_many_arguments)]
fn step_result(
    ctx: &Ctx,
    proto: Protocol,
    shared: &Shared,
    step_no: usize,
    args: &FanoutArgs,
    (connections, rooms, room_size, senders): (usize, usize, usize, usize),
    placement: &std::collections::BTreeMap<String, usize>,
    drain_ms: u64,
) -> serde_json::Value {
    let st = &shared.steps[step_no];
    let g = |a: &AtomicU64| a.load(Relaxed);
    let sent = g(&st.sent);
    let acked = g(&st.acked);
    let send_errors = g(&st.send_errors);
    let expected = g(&st.expected);
    let delivered = g(&st.delivered);
    let offered = (st.rate * (args.warmup_s + args.duration_s)).round() as u64;
    serde_json::json!({
        "scenario": "fanout",
        "protocol": proto.name(),
        "run_id": ctx.run_id,
        "step": step_no + 1,
        "rate": st.rate,
        "connections": connections,
        "rooms": rooms,
        "room_size": room_size,
        "senders": senders,
        "client_msg_ids": args.client_msg_ids && proto == Protocol::Chat,
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "body_bytes": args.body_bytes,
        "offered": offered,
        "sent": sent,
        "send_failed": g(&st.send_failed),
        // The Socket.IO peer does not acknowledge: no acked / unacked.
        "acked": if proto == Protocol::Chat { Some(acked) } else { None },
        "send_errors": send_errors,
        "unacked": if proto == Protocol::Chat {
            Some(sent.saturating_sub(acked + send_errors))
        } else {
            None
        },
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "duplicated": g(&st.duplicated),
        "out_of_order": g(&st.out_of_order),
        "seq_gaps": g(&st.seq_gaps),
        "acked_per_s": round1(g(&st.acked_in_window) as f64 / args.duration_s),
        "delivered_per_s": round1(g(&st.delivered_in_window) as f64 / args.duration_s),
        "latency_us": Summary::of(&st.latency.merged()),
        "ack_latency_us": Summary::of(&st.ack_latency.merged()),
        "late_sends": g(&st.late_sends),
        "max_send_lag_us": g(&st.max_lag_us),
        "drain_ms": drain_ms,
        "disconnects": g(&shared.disconnects),
        "reconnects": g(&shared.reconnects),
        "foreign": g(&shared.foreign),
        "unexpected_acks": g(&shared.unexpected_acks),
        "errors": shared.errors.count(),
        "first_errors": shared.errors.first(),
        "servers": placement,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn summary(v: &serde_json::Value) -> Summary {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

fn print_step(r: &serde_json::Value) {
    println!(
        "  offered {}  sent {}  acked {}  send errors {}  unacked {}  (drain {} ms)",
        r["offered"], r["sent"], r["acked"], r["send_errors"], r["unacked"], r["drain_ms"]
    );
    println!(
        "  expected deliveries {}  delivered {}  lost {}  duplicated {}  out of order {}  seq gaps {}",
        r["expected"], r["delivered"], r["lost"], r["duplicated"], r["out_of_order"], r["seq_gaps"]
    );
    if r["drained"] == false {
        println!(
            "  NOTE: acks or deliveries still missing after the drain wait ({} ms). `seq gaps` \
             counts messages a connection skipped past: with in-order delivery they never \
             arrive. The rest of `lost` (lost - seq gaps) and `unacked` may still be in flight \
             if the server is behind; the next step then starts with that backlog.",
            r["drain_ms"]
        );
    }
    println!(
        "  measured window: acked {}/s  delivered {}/s",
        r["acked_per_s"], r["delivered_per_s"]
    );
    println!(
        "  end-to-end latency ms: {}",
        summary(&r["latency_us"]).line_ms()
    );
    println!(
        "  send->ack latency ms:  {}",
        summary(&r["ack_latency_us"]).line_ms()
    );
    if !r["bench_cpu_ms"].is_null() {
        println!(
            "  chat-bench's own CPU {} ms, {} µs per delivery ({} in the kernel)",
            r["bench_cpu_ms"],
            r["bench_cpu_us_per_delivery"],
            r["bench_kernel_cpu_us_per_delivery"]
        );
    }
    for (group, _) in client::CPU_GROUPS {
        let ms = &r[format!("{group}_cpu_ms")];
        if !ms.is_null() {
            println!(
                "  {group} CPU {ms} ms, {} µs per delivery ({} in the kernel)",
                r[format!("{group}_cpu_us_per_delivery")],
                r[format!("{group}_kernel_cpu_us_per_delivery")]
            );
        }
    }
    println!(
        "  sends >10 ms behind schedule {}  max lag {} ms  disconnects {}  reconnect frames {}",
        r["late_sends"],
        ms(r["max_send_lag_us"].as_u64().unwrap_or(0)),
        r["disconnects"],
        r["reconnects"]
    );
    if r["errors"].as_u64().unwrap_or(0) > 0 {
        println!("  errors {}; first: {}", r["errors"], r["first_errors"]);
        if r["first_errors"].to_string().contains("rate_limited") {
            println!(
                "  hint: rate_limited means a connection sent faster than the server's \
                 per-connection limit (CHAT_SEND_RATE_PER_S); spread the rate over more senders"
            );
        }
    }
}

fn print_table(results: &[serde_json::Value]) {
    println!(
        "\n{:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "rate/s",
        "sent",
        "acked",
        "expected",
        "delivered",
        "lost",
        "dup",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for r in results {
        let lat = summary(&r["latency_us"]);
        println!(
            "{:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r["rate"].to_string(),
            r["sent"].to_string(),
            r["acked"].to_string(),
            r["expected"].to_string(),
            r["delivered"].to_string(),
            r["lost"].to_string(),
            r["duplicated"].to_string(),
            r["delivered_per_s"].to_string(),
            ms(lat.p50),
            ms(lat.p99),
            ms(lat.p999),
            ms(lat.max)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_step_and_time() {
        assert_eq!(parse_body("2.123456.7"), Some((2, 123456)));
        assert_eq!(parse_body("0.5.0.xxxx"), Some((0, 5)));
        assert_eq!(parse_body("hello"), None);
        assert_eq!(parse_body_n("2.123456.7"), Some((2, 123456, 7)));
        assert_eq!(parse_body_n("0.5.9.xxxx"), Some((0, 5, 9)));
    }
}

//! `chat-bench`: a load generator for the chat service that speaks only the
//! public client contract (`shared/PROTOCOL.md`): development tokens, REST
//! rooms, `POST /v1/connect` tickets and WebSocket `send`/`message`/`ack`
//! frames. It works against the local mode and against a cluster alike.
//!
//! Scenarios: `fanout` (open-loop paced sends into many rooms, end-to-end
//! latency and loss), `connect` (session open rate, memory per idle
//! session), `bigroom` (fan-out time of one room with many members). Each
//! prints a human report and one `RESULT {json}` line per result.

mod bigroom;
mod client;
mod connect;
mod fanout;
mod socketio;
mod stats;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator speaking only the public client contract (REST + WebSocket)"
)]
struct Cli {
    /// Base URL of an API server (with development tokens enabled).
    #[arg(
        long,
        global = true,
        env = "CHAT_BENCH_API",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// Prefix of this run's user and room names (default: random).
    #[arg(long, global = true)]
    run_id: Option<String>,
    /// Setup calls in flight at once (tokens, rooms, connects before a run).
    #[arg(long, global = true, default_value_t = 50)]
    setup_concurrency: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Many rooms, paced senders, end-to-end latency, loss and duplicates.
    Fanout(fanout::FanoutArgs),
    /// Session open rate and server memory per idle session.
    Connect(connect::ConnectArgs),
    /// One big room: time for a message to reach every member.
    Bigroom(bigroom::BigroomArgs),
}

/// What every scenario gets.
pub struct Ctx {
    pub api: chat_client::RestClient,
    pub api_base: String,
    pub run_id: String,
    pub setup_concurrency: usize,
    /// Time zero of the run; message timestamps are µs since it.
    pub epoch: Instant,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let ctx = Ctx {
            api: client::rest_client(&cli.api, cli.setup_concurrency)?,
            api_base: cli.api.clone(),
            run_id: cli.run_id.unwrap_or_else(client::new_run_id),
            setup_concurrency: cli.setup_concurrency.max(1),
            epoch: Instant::now(),
        };
        match cli.cmd {
            Cmd::Fanout(args) => fanout::run(&ctx, args).await,
            Cmd::Connect(args) => connect::run(&ctx, args).await,
            Cmd::Bigroom(args) => bigroom::run(&ctx, args).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

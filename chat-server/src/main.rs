use anyhow::Context;
use clap::Parser;

/// WebSocket chat server: holds sessions, reports health, drains on SIGTERM.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    chat: chat_server::ChatConfig,
    /// Log format: text or json.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text")]
    log_format: chat_ops::LogFormat,
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads (see the function).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    one_malloc_arena();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    chat_ops::init_tracing(cli.log_format);
    let store = cli.chat.store.open().await.context("opening the store")?;
    let listener = tokio::net::TcpListener::bind(cli.chat.listen)
        .await
        .with_context(|| format!("binding {}", cli.chat.listen))?;
    let server = chat_server::ChatServer::new(cli.chat, store);
    server.run(listener, chat_ops::shutdown_signal()).await?;
    tracing::info!("chat-server stopped");
    Ok(())
}

/// One glibc malloc arena instead of up to eight per core. A chat server's
/// memory is mostly small allocations that live as long as a session, and
/// each arena keeps the free memory of its own threads after a connect
/// burst: with one, an idle session in 5 rooms took 0.92x the RSS, and
/// fan-out CPU was unchanged (docs/benchmarks.md, "Idle sessions in
/// rooms"). `MALLOC_ARENA_MAX` in the environment still decides. Called
/// before any other thread exists: glibc fixes the limit when a second
/// thread first allocates.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: sets one allocator parameter, with no other thread
        // running to allocate meanwhile.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

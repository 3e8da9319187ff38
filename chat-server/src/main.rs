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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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

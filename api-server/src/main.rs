use anyhow::Context;
use clap::Parser;

/// Stateless REST API of the chat service.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    api: api_server::ApiConfig,
    /// Log format: text or json.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text")]
    log_format: chat_ops::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chat_ops::init_tracing(cli.log_format);
    let store = cli.api.store.open().await.context("opening the store")?;
    let listen = cli.api.listen;
    let dev_tokens = cli.api.dev_tokens;
    let state = api_server::AppState::new(cli.api, store).context("configuration")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(listen = %listen, dev_tokens, "api-server listening");
    api_server::serve(listener, state, chat_ops::shutdown_signal()).await?;
    tracing::info!("api-server stopped");
    Ok(())
}

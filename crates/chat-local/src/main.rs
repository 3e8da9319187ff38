//! The local one-command mode: an API server and N chat servers in one
//! process on loopback, sharing the in-memory store, development tokens on.
//! Nothing else to install: no Redis, no Kubernetes.
//!
//! Each part is the same code as the cluster binaries, configured through
//! the same flag structs; only the store is shared in memory instead of in
//! Redis Cluster.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use chat_store::{MemoryStore, Store};
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Run the whole chat service locally: one API server and chat servers, in-memory store"
)]
struct Cli {
    /// Interface to bind everything on.
    #[arg(long, env = "CHAT_LOCAL_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of the REST API.
    #[arg(long, env = "CHAT_LOCAL_API_PORT", default_value_t = 8080)]
    api_port: u16,
    /// Ports of the chat servers, comma-separated (one server per port).
    #[arg(
        long,
        env = "CHAT_LOCAL_CHAT_PORTS",
        value_delimiter = ',',
        default_value = "9001,9002"
    )]
    chat_ports: Vec<u16>,
    /// Log format: text or json.
    #[arg(long, env = "CHAT_LOG_FORMAT", default_value = "text")]
    log_format: chat_ops::LogFormat,
    /// Messages kept per room in memory.
    #[arg(long, env = "CHAT_HISTORY_RETENTION", default_value_t = 10_000)]
    history_retention: u64,
    /// Browser origins allowed to call the API and open WebSockets, besides
    /// the console's own: pages on loopback (any port) by default, so a dev
    /// server such as Vite's works out of the box. Exact origins, `*`, or
    /// `http://host:*`.
    #[arg(long, env = "CHAT_CORS_ORIGINS", value_delimiter = ',',
          default_values_t = chat_auth::origin::LOCALHOST_ORIGINS.iter().map(|o| o.to_string()))]
    cors_origins: Vec<String>,
    /// Open the console in a browser at startup (only when run from a
    /// terminal).
    #[arg(long, env = "CHAT_LOCAL_OPEN", default_value_t = true, action = clap::ArgAction::Set)]
    open: bool,
}

#[derive(Parser)]
struct ApiArgs {
    #[command(flatten)]
    api: api_server::ApiConfig,
}

#[derive(Parser)]
struct ChatArgs {
    #[command(flatten)]
    chat: chat_server::ChatConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chat_ops::init_tracing(cli.log_format);
    // Fresh secrets per run: local tokens are for this process only.
    let jwt_secret =
        std::env::var("CHAT_JWT_SECRET").unwrap_or_else(|_| chat_protocol::ids::new_id(""));
    let ticket_secret = chat_protocol::ids::new_id("");
    let internal_secret = chat_protocol::ids::new_id("");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(chat_store::StoreConfig {
        history_retention: cli.history_retention.max(1),
        ..chat_store::StoreConfig::default()
    }));

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = Vec::new();
    let mut chat_urls = Vec::new();
    for (i, port) in cli.chat_ports.iter().enumerate() {
        let addr = SocketAddr::new(cli.host, *port);
        let args = ChatArgs::try_parse_from([
            "chat-server".to_owned(),
            format!("--listen={addr}"),
            format!("--server-id=chat-{}", i + 1),
            format!("--ticket-secret={ticket_secret}"),
            format!("--internal-secret={internal_secret}"),
            format!("--cors-origins={}", cli.cors_origins.join(",")),
        ])?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding chat server port {addr}"))?;
        let server = chat_server::ChatServer::new(args.chat, store.clone());
        chat_urls.push(server.config.public_url());
        let mut stop = stop_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            server
                .run(listener, async move {
                    let _ = stop.recv().await;
                })
                .await
        }));
    }

    let api_addr = SocketAddr::new(cli.host, cli.api_port);
    let args = ApiArgs::try_parse_from([
        "api-server".to_owned(),
        format!("--listen={api_addr}"),
        format!("--jwt-secret={jwt_secret}"),
        format!("--ticket-secret={ticket_secret}"),
        format!("--internal-secret={internal_secret}"),
        "--dev-tokens".to_owned(),
        format!("--cors-origins={}", cli.cors_origins.join(",")),
    ])?;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding API port {api_addr}"))?;
    let state = api_server::AppState::new(args.api, store.clone())?;
    let mut stop = stop_tx.subscribe();
    tasks.push(tokio::spawn(async move {
        api_server::serve(listener, state, async move {
            let _ = stop.recv().await;
        })
        .await
    }));

    let console_url = format!("http://{api_addr}/");
    println!("chat service running (in-memory store, development tokens on)");
    println!(
        "  console:      {console_url}   (open it in a browser; a second tab can be a second user)"
    );
    println!("  REST API:     http://{api_addr}   (OpenAPI: http://{api_addr}/openapi.json)");
    for url in &chat_urls {
        println!("  chat server:  {url}");
    }
    println!("  try:          curl -s -X POST http://{api_addr}/v1/auth/token -d '{{\"user\":\"alice\"}}'");
    println!("Ctrl-C stops everything (chat servers drain first).");
    if cli.open && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        if let Err(e) = webbrowser::open(&console_url) {
            tracing::info!(error = %e, "no browser to open; open the console URL yourself");
        }
    }

    chat_ops::shutdown_signal().await;
    let _ = stop_tx.send(());
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

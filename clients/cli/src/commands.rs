//! One function per command. Each talks to the service only through
//! `chat-client` and prints through [`Output`].

use std::io::BufRead;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_client::{
    ChatClient, ConnectionConfig, ConnectionState, CreateRoomRequest, Event, HistoryQuery, Message,
    RestClient, StaticToken, TokenScope,
};
use clap::CommandFactory;

use crate::cli::{Cli, Command, Global, RoomCommand};
use crate::config::{Config, Login};
use crate::failure::{self, one_line, Failure};
use crate::output::{table, Output};

pub const DEFAULT_API: &str = "http://127.0.0.1:8080";

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Output::new(cli.global.json, cli.global.verbose);
    let mut config = Config::load()?;
    let api = cli
        .global
        .api
        .clone()
        .or_else(|| config.api.clone())
        .unwrap_or_else(|| DEFAULT_API.to_owned());
    let api = api.trim_end_matches('/').to_owned();
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "chat", &mut std::io::stdout());
            Ok(())
        }
        Command::Login { user, service } => login(&out, &mut config, &api, &user, service).await,
        Command::Logout => {
            config.logins.remove(&api);
            let path = config.save()?;
            out.note(&format!(
                "removed the token of {api} from {}",
                path.display()
            ));
            Ok(())
        }
        command => {
            let client = chat_client(&cli.global, &config, &api)?;
            let rest = client.rest().clone();
            let context = Context { out, client, rest };
            context.run(command).await
        }
    }
}

async fn login(
    out: &Output,
    config: &mut Config,
    api: &str,
    user: &str,
    service: bool,
) -> Result<(), Failure> {
    let scope = if service {
        TokenScope::Service
    } else {
        TokenScope::User
    };
    let token = out
        .waiting(
            "getting a token",
            chat_client::dev_token(api, user, scope),
        )
        .await
        .map_err(|e| match e.kind() {
            chat_client::ErrorKind::NotFound => Failure {
                code: failure::AUTH,
                message: format!(
                    "{api} does not hand out development tokens ({e}); pass a token with --token or CHAT_TOKEN"
                ),
            },
            _ => Failure::from(e),
        })?;
    config.logins.insert(
        api.to_owned(),
        Login {
            user: token.user.clone(),
            token: token.token.clone(),
            expires_at: token.expires_at,
        },
    );
    config.api = Some(api.to_owned());
    let path = config.save()?;
    if out.json {
        out.json_line(&serde_json::json!({
            "user": token.user, "api": api, "expires_at": token.expires_at,
            "config": path.display().to_string(),
        }));
    } else {
        out.line(&format!("logged in as {} at {api}", token.user));
        out.note(&format!("token kept in {}", path.display()));
    }
    Ok(())
}

/// The client with the token from --token/CHAT_TOKEN or the config file;
/// an expired token fails here, before any call. Its connections fail fast
/// on the first attempt (a CLI reports, it does not wait forever) and
/// retry forever once connected.
fn chat_client(global: &Global, config: &Config, api: &str) -> Result<ChatClient, Failure> {
    let token = match &global.token {
        Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => match config.logins.get(api) {
            Some(login) => login.token.clone(),
            None => {
                return Err(Failure::auth(format!(
                    "not logged in at {api}: run `chat login <user>` or set CHAT_TOKEN"
                )))
            }
        },
    };
    if let Some(exp) = chat_client::jwt_expiry(&token) {
        if exp <= SystemTime::now() {
            let ago = SystemTime::now()
                .duration_since(exp)
                .unwrap_or_default()
                .as_secs();
            return Err(Failure::auth(format!(
                "the token expired {ago} s ago: run `chat login <user>` or set a new CHAT_TOKEN"
            )));
        }
    }
    let client = ChatClient::builder(api, StaticToken::new(token))
        .connection(ConnectionConfig {
            fail_fast: true,
            ..ConnectionConfig::default()
        })
        .build()?;
    Ok(client)
}

struct Context {
    out: Output,
    client: ChatClient,
    rest: RestClient,
}

impl Context {
    async fn run(&self, command: Command) -> Result<(), Failure> {
        match command {
            Command::Rooms { of } => self.rooms(of).await,
            Command::Room { command } => self.room(command).await,
            Command::Members { room } => self.members(&room).await,
            Command::Send { room, text, from } => self.send(&room, text, from).await,
            Command::Tail {
                rooms,
                after,
                count,
            } => self.tail(&rooms, after, count).await,
            Command::History {
                room,
                after,
                before,
                limit,
            } => {
                let query = HistoryQuery {
                    after,
                    before,
                    limit,
                };
                self.history(&room, query).await
            }
            Command::Read { room, seq } => self.read(&room, seq).await,
            Command::Reads { room } => self.reads(&room).await,
            Command::Servers => self.servers().await,
            Command::Login { .. } | Command::Logout | Command::Completions { .. } => {
                unreachable!("handled before a token is needed")
            }
        }
    }

    async fn rooms(&self, of: Option<String>) -> Result<(), Failure> {
        let rooms = match of {
            Some(user) => {
                self.out
                    .waiting("listing rooms", self.rest.rooms_of_user(&user))
                    .await?
            }
            None => self.out.waiting("listing rooms", self.rest.rooms()).await?,
        };
        if self.out.json {
            self.out.json_line(&rooms);
            return Ok(());
        }
        if rooms.is_empty() {
            self.out.note("no rooms");
            return Ok(());
        }
        let mut rows = vec![vec![
            "ID".to_string(),
            "NAME".into(),
            "MEMBERS".into(),
            "LAST".into(),
            "UNREAD".into(),
        ]];
        for r in &rooms {
            rows.push(vec![
                r.id.clone(),
                one_line(&r.name),
                r.member_count.to_string(),
                r.last_seq.to_string(),
                r.unread.to_string(),
            ]);
        }
        for line in table(&rows) {
            self.out.line(&line);
        }
        Ok(())
    }

    async fn room(&self, command: RoomCommand) -> Result<(), Failure> {
        match command {
            RoomCommand::Create {
                name,
                members,
                created_by,
            } => {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
                let request = CreateRoomRequest {
                    name,
                    members: Some(members),
                    created_by,
                };
                let room = self
                    .out
                    .waiting("creating the room", self.rest.create_room(&request))
                    .await?;
                if self.out.json {
                    self.out.json_line(&room);
                } else {
                    self.out.line(&room.id);
                    self.out.note(&format!(
                        "created room {:?} with {} members",
                        room.name, room.member_count
                    ));
                }
            }
            RoomCommand::Show { room } => {
                let room = self.out.waiting("reading", self.rest.room(&room)).await?;
                if self.out.json {
                    self.out.json_line(&room);
                } else {
                    for line in table(&[
                        vec!["id".into(), room.id.clone()],
                        vec!["name".into(), one_line(&room.name)],
                        vec!["created_by".into(), room.created_by.clone()],
                        vec!["members".into(), room.member_count.to_string()],
                        vec!["last_seq".into(), room.last_seq.to_string()],
                        vec!["read_seq".into(), room.read_seq.to_string()],
                        vec!["unread".into(), room.unread.to_string()],
                    ]) {
                        self.out.line(&line);
                    }
                }
            }
            RoomCommand::Add { room, user } => {
                self.out
                    .waiting("adding", self.rest.add_member(&room, &user))
                    .await?;
                self.done(&format!("added {user} to {room}"));
            }
            RoomCommand::Remove { room, user } => {
                self.out
                    .waiting("removing", self.rest.remove_member(&room, &user))
                    .await?;
                self.done(&format!("removed {user} from {room}"));
            }
        }
        Ok(())
    }

    fn done(&self, what: &str) {
        if self.out.json {
            self.out.json_line(&serde_json::json!({ "ok": true }));
        } else {
            self.out.line(what);
        }
    }

    async fn members(&self, room: &str) -> Result<(), Failure> {
        let members = self
            .out
            .waiting("listing members", self.rest.members(room))
            .await?;
        if self.out.json {
            self.out.json_line(&members);
            return Ok(());
        }
        let mut rows = vec![vec!["USER".to_string(), "ONLINE".into()]];
        for m in &members {
            rows.push(vec![
                m.user.clone(),
                if m.online { "yes" } else { "no" }.into(),
            ]);
        }
        for line in table(&rows) {
            self.out.line(&line);
        }
        Ok(())
    }

    /// Over REST, each message with its own `client_msg_id`, retried with
    /// it until stored: a message is stored once even when a retry follows
    /// a lost answer.
    async fn send(
        &self,
        room: &str,
        text: Option<String>,
        from: Option<String>,
    ) -> Result<(), Failure> {
        match text {
            Some(text) => {
                let m = self
                    .out
                    .waiting(
                        "sending",
                        self.rest.publish(room, &text, from.as_deref(), None),
                    )
                    .await?;
                self.sent(&m);
            }
            None => {
                let stdin = std::io::stdin();
                let mut lines = 0u64;
                for line in stdin.lock().lines() {
                    let line =
                        line.map_err(|e| Failure::usage(format!("reading standard input: {e}")))?;
                    if line.is_empty() {
                        continue;
                    }
                    lines += 1;
                    let m = self
                        .rest
                        .publish(room, &line, from.as_deref(), None)
                        .await
                        .map_err(|e| {
                            let mut f = Failure::from(e);
                            f.message = format!("line {lines}: {}", f.message);
                            f
                        })?;
                    self.sent(&m);
                }
            }
        }
        Ok(())
    }

    fn sent(&self, m: &Message) {
        if self.out.json {
            self.out.json_line(m);
        } else {
            self.out.line(&format!("sent {} to {}", m.seq, m.room));
        }
    }

    async fn tail(
        &self,
        rooms: &[String],
        after: Option<u64>,
        count: Option<u64>,
    ) -> Result<(), Failure> {
        // Check every room first: an unknown room is an error now, not a
        // silent wait.
        let mut starts = Vec::new();
        for room in rooms {
            let r = self
                .out
                .waiting("looking up rooms", self.rest.room(room))
                .await?;
            starts.push((r.id.clone(), after.unwrap_or(r.last_seq)));
        }
        let mut conn = self
            .out
            .waiting("connecting", self.client.connect())
            .await?;
        for (room, start) in &starts {
            // Replays what came after `start`, then follows live.
            conn.track(room, Some(*start))?;
        }
        let prefix = rooms.len() > 1;
        let mut printed = 0u64;
        if count == Some(0) {
            return Ok(());
        }
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            let event = tokio::select! {
                event = conn.next_event() => event,
                _ = &mut stop => {
                    conn.close().await;
                    return Ok(());
                }
            };
            let Some(event) = event else { return Ok(()) };
            match event {
                Event::Message(m) => {
                    if self.out.json {
                        self.out.json_line(&m);
                    } else if prefix {
                        self.out.line(&format!(
                            "[{}] {} {}: {}",
                            m.room,
                            m.seq,
                            m.from,
                            one_line(&m.body)
                        ));
                    } else {
                        self.out
                            .line(&format!("{} {}: {}", m.seq, m.from, one_line(&m.body)));
                    }
                    printed += 1;
                    if count.is_some_and(|c| printed >= c) {
                        conn.close().await;
                        return Ok(());
                    }
                }
                Event::Session(s) => self.out.note(&format!(
                    "connected to {} (session {})",
                    s.server_id, s.session
                )),
                Event::State(state) if state != ConnectionState::Connected => self
                    .out
                    .note(&format!("connection {state:?}").to_lowercase()),
                Event::State(_) => {}
                Event::Error(e) => self.out.note(&format!("retrying after: {e}")),
                Event::ProtocolError(problem) => {
                    conn.close().await;
                    return Err(Failure::protocol(problem.to_string()));
                }
                Event::Stopped(e) => return Err(e.into()),
                Event::Typing { .. } | Event::Presence { .. } | Event::Read { .. } => {}
            }
        }
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<(), Failure> {
        let messages = self
            .out
            .waiting("reading history", self.rest.history(room, query))
            .await?;
        for m in &messages {
            if self.out.json {
                self.out.json_line(m);
            } else {
                self.out
                    .line(&format!("{} {}: {}", m.seq, m.from, one_line(&m.body)));
            }
        }
        Ok(())
    }

    async fn read(&self, room: &str, seq: Option<u64>) -> Result<(), Failure> {
        let seq = match seq {
            Some(seq) => seq,
            None => {
                self.out
                    .waiting("reading", self.rest.room(room))
                    .await?
                    .last_seq
            }
        };
        let marker = self
            .out
            .waiting("marking read", self.rest.mark_read(room, seq))
            .await?;
        if self.out.json {
            self.out.json_line(&marker);
        } else {
            self.out
                .line(&format!("{} read up to {}", marker.room, marker.read_seq));
        }
        Ok(())
    }

    async fn reads(&self, room: &str) -> Result<(), Failure> {
        let reads = self.out.waiting("reading", self.rest.reads(room)).await?;
        if self.out.json {
            self.out.json_line(&reads);
            return Ok(());
        }
        let mut rows = vec![vec!["USER".to_string(), "READ UP TO".into()]];
        for r in &reads {
            rows.push(vec![r.user.clone(), r.seq.to_string()]);
        }
        for line in table(&rows) {
            self.out.line(&line);
        }
        Ok(())
    }

    async fn servers(&self) -> Result<(), Failure> {
        let servers = self
            .out
            .waiting("listing servers", self.rest.servers())
            .await?;
        if self.out.json {
            self.out.json_line(&servers);
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        let mut rows = vec![vec![
            "ID".to_string(),
            "STATE".into(),
            "CONNECTIONS".into(),
            "SEEN".into(),
            "URL".into(),
        ]];
        for s in &servers {
            rows.push(vec![
                s.id.clone(),
                format!("{:?}", s.state).to_lowercase(),
                s.connections.to_string(),
                format!("{} ms ago", now.saturating_sub(s.last_seen_ms)),
                s.url.clone(),
            ]);
        }
        for line in table(&rows) {
            self.out.line(&line);
        }
        Ok(())
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

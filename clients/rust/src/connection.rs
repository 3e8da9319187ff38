//! [`Connection`]: a WebSocket session that stays up. One driver task owns
//! the connection life cycle (ticket, socket, welcome, resume, liveness,
//! reconnect) and wires the pure parts together: [`RoomCursors`] (ordering
//! and dedup per room), [`Outbox`] (sends until acknowledged, one
//! `client_msg_id` each), [`Backoff`] (delays between attempts). The
//! application never sees a socket: it sees [`Event`]s, messages among them
//! in order and once, and sends that resolve once stored.
//!
//! The driver is one `select!` loop over: commands from the handles, the
//! socket, the pending open, finished gap fills, and one timer armed at the
//! earliest deadline (reconnect, welcome, drain, send retry or timeout, gap
//! fill, ping). It holds no lock and shares no state: handles talk to it
//! over a channel, so a slow application cannot stall acknowledgements.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::frame::close_code::SERVICE_RESTART;
use chat_protocol::{ClientFrame, ErrorCode, Message, ServerFrame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::backoff::{Backoff, BackoffConfig};
use crate::outbox::Outbox;
use crate::rest::{new_client_msg_id, HistoryQuery};
use crate::room_cursors::{Gap, RoomCursors};
use crate::transport::{Socket, SocketEvent, Transport};
use crate::{validate, Error, ErrorKind};

/// Resume frames name at most this many rooms (the server's limit).
const MAX_RESUME_ROOMS: usize = 1000;
/// Close code this client uses when it abandons a socket.
const CLIENT_GAVE_UP: u16 = 4000;
/// Largest history page.
const MAX_PAGE: u64 = 200;

/// Timings and options of a [`Connection`]. Every field has a default.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Reconnect delays (full jitter between 0 and the ceiling).
    pub reconnect: BackoffConfig,
    /// No ack for this long: the connection is presumed dead and replaced.
    pub send_timeout: Duration,
    /// How long an out-of-order gap may stay open before history fills it.
    pub gap_fill_delay: Duration,
    /// Longest wait for `welcome` after opening a socket.
    pub welcome_timeout: Duration,
    /// A silent connection is pinged after this long...
    pub ping_interval: Duration,
    /// ...and replaced if still silent this long after the ping.
    pub pong_timeout: Duration,
    /// A resume that sends no `resumed` for this long no longer holds back
    /// gap fills.
    pub resume_timeout: Duration,
    /// Base and ceiling of the retry delay of refused sends (`unavailable`,
    /// `rate_limited`).
    pub retry_base: Duration,
    pub max_retry_delay: Duration,
    /// At most one `typing` frame per room this often.
    pub typing_throttle: Duration,
    /// Rooms to resume from the start: room -> last seq the application
    /// already has (e.g. persisted from [`ConnectionHandle::positions`]).
    pub cursors: BTreeMap<String, u64>,
    /// `true`: [`crate::ChatClient::connect`] fails with the first
    /// attempt's error instead of retrying until connected (a CLI wants
    /// this; reconnects after the first welcome always retry).
    pub fail_fast: bool,
    /// Seed of the jitter; `None`: from the OS.
    pub seed: Option<u64>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            reconnect: BackoffConfig::default(),
            send_timeout: Duration::from_secs(10),
            gap_fill_delay: Duration::from_secs(1),
            welcome_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            resume_timeout: Duration::from_secs(10),
            retry_base: Duration::from_millis(250),
            max_retry_delay: Duration::from_secs(10),
            typing_throttle: Duration::from_secs(2),
            cursors: BTreeMap::new(),
            fail_fast: false,
            seed: None,
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// First attempt under way.
    Connecting,
    /// Welcomed by a chat server.
    Connected,
    /// Lost the connection; attempting again (with backoff).
    Reconnecting,
    /// Closed by the application, or stopped by a fatal error.
    Disconnected,
}

/// Where the current connection is placed (the server's `welcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub server_id: String,
    pub user: String,
    pub session: String,
}

/// What a send resolves with: where the message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAck {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub client_msg_id: String,
}

/// A frame from the server that was skipped: not JSON, of an unknown type,
/// or lacking a field of the right kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameProblem {
    /// Why it was skipped.
    pub detail: String,
    /// The frame's text, cut to 200 characters.
    pub text: String,
}

impl std::fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed frame from the server ({}): {}",
            self.detail, self.text
        )
    }
}

/// What happens on a connection, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message, each once per room and in seq order.
    Message(Message),
    /// Someone is typing.
    Typing { room: String, user: String },
    /// A member came online or went offline (v1.1).
    Presence {
        room: String,
        user: String,
        online: bool,
        ts: u64,
    },
    /// A member's read marker moved (v1.1).
    Read {
        room: String,
        user: String,
        seq: u64,
    },
    /// The connection state changed.
    State(ConnectionState),
    /// A chat server welcomed this client (after every (re)connection).
    Session(SessionInfo),
    /// Something failed and will be retried (a connection attempt, a gap
    /// fill), or the server sent an error not tied to a send.
    Error(Error),
    /// A frame from the server was malformed and skipped.
    ProtocolError(FrameProblem),
    /// The connection stopped for good with this error (a refused token, a
    /// service token, ...). The last event.
    Stopped(Error),
}

enum Command {
    Send {
        room: String,
        body: String,
        client_msg_id: String,
        reply: oneshot::Sender<Result<SendAck, Error>>,
    },
    Track {
        room: String,
        after: Option<u64>,
    },
    Forget {
        room: String,
    },
    Typing {
        room: String,
    },
    Read {
        room: String,
        seq: u64,
    },
    Positions(oneshot::Sender<BTreeMap<String, u64>>),
    Close(oneshot::Sender<()>),
}

/// A cheap, cloneable handle for sending on a [`Connection`] from other
/// tasks. The connection stays up while the [`Connection`] or any handle
/// exists.
#[derive(Clone)]
pub struct ConnectionHandle {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    session: watch::Receiver<Option<SessionInfo>>,
}

/// A live connection: a [`ConnectionHandle`] plus the stream of
/// [`Event`]s. Get one from [`crate::ChatClient::connect`] (or
/// [`Connection::open`] with a transport of your own).
pub struct Connection {
    handle: ConnectionHandle,
    events: mpsc::UnboundedReceiver<Event>,
}

impl std::ops::Deref for Connection {
    type Target = ConnectionHandle;
    fn deref(&self) -> &ConnectionHandle {
        &self.handle
    }
}

impl Connection {
    /// Starts a connection over `transport` and waits for the first
    /// welcome. Fails when the first attempt fails for a reason retrying
    /// cannot fix (a refused token, a service token: 403), or with any
    /// error of the first attempt when `config.fail_fast` is set.
    pub async fn open(
        transport: Arc<dyn Transport>,
        config: ConnectionConfig,
    ) -> Result<Connection, Error> {
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let (session_tx, session_rx) = watch::channel(None);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (fill_tx, fill_rx) = mpsc::unbounded_channel();
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let start = Instant::now();
        let mut cursors = RoomCursors::new();
        for (room, seq) in &config.cursors {
            cursors.track(room, Some(*seq), 0);
        }
        let driver = Driver {
            transport,
            backoff: Backoff::new(config.reconnect),
            config,
            cursors,
            outbox: Outbox::new(),
            rng,
            start,
            events: events_tx,
            state_tx,
            session_tx,
            commands: commands_rx,
            fill_tx,
            fill_rx,
            ready: Some(ready_tx),
            stopped: false,
            socket: None,
            opening: None,
            welcomed: false,
            ever_connected: false,
            reconnect_at: Some(0),
            reconnect_after: None,
            welcome_deadline: None,
            drain_deadline: None,
            last_frame_at: 0,
            ping_outstanding: false,
            resumes_pending: VecDeque::new(),
            resume_started_at: None,
            resume_retry_at: None,
            fills: HashSet::new(),
            typing_sent_at: HashMap::new(),
        };
        tokio::spawn(driver.run());
        let handle = ConnectionHandle {
            commands: commands_tx,
            state: state_rx,
            session: session_rx,
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(Connection {
                handle,
                events: events_rx,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// The next event; `None` once the connection is closed and every
    /// event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next message, skipping other events; `Err` with the error a
    /// [`Event::Stopped`] carried, `Ok(None)` once closed.
    pub async fn next_message(&mut self) -> Result<Option<Message>, Error> {
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Message(m) => return Ok(Some(m)),
                Event::Stopped(e) => return Err(e),
                _ => {}
            }
        }
        Ok(None)
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }

    /// Splits into the handle and the event receiver.
    pub fn split(self) -> (ConnectionHandle, mpsc::UnboundedReceiver<Event>) {
        (self.handle, self.events)
    }
}

impl ConnectionHandle {
    fn command(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Closed)
    }

    /// Sends `body` to `room`. Resolves once the server stored it; retried
    /// (same `client_msg_id`) across reconnects, `unavailable`, timeouts
    /// and `rate_limited` until then. Fails with [`Error::SendRefused`]
    /// when the server refuses it (`forbidden`, `invalid_request`), with
    /// [`Error::InvalidArgument`] before sending anything for a bad
    /// argument, and with [`Error::Closed`] when the connection closes
    /// first.
    pub async fn send(&self, room: &str, body: &str) -> Result<SendAck, Error> {
        self.send_with_id(room, body, new_client_msg_id()).await
    }

    /// [`Self::send`] with a `client_msg_id` of the caller's (e.g. one
    /// persisted before a crash, so a resend is stored once).
    pub async fn send_with_id(
        &self,
        room: &str,
        body: &str,
        client_msg_id: String,
    ) -> Result<SendAck, Error> {
        validate::room_id(room)?;
        validate::body(body)?;
        validate::client_msg_id(&client_msg_id)?;
        let (reply, answer) = oneshot::channel();
        self.command(Command::Send {
            room: room.to_owned(),
            body: body.to_owned(),
            client_msg_id,
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Tracks `room` for ordering and resume. `after`: the last seq the
    /// application already has; messages after it are delivered (replayed
    /// from history if needed). `None`: from now, i.e. after the room's
    /// latest message, looked up in history (until that answer, or if it
    /// fails, from the first message that arrives). A room already tracked
    /// keeps its position.
    pub fn track(&self, room: &str, after: Option<u64>) -> Result<(), Error> {
        validate::room_id(room)?;
        if let Some(seq) = after {
            validate::seq(seq, "after")?;
        }
        self.command(Command::Track {
            room: room.to_owned(),
            after,
        })
    }

    /// Stops tracking `room` (e.g. after leaving it).
    pub fn forget(&self, room: &str) -> Result<(), Error> {
        self.command(Command::Forget {
            room: room.to_owned(),
        })
    }

    /// Tells the room's other members that this user is typing (at most
    /// once per `typing_throttle`; dropped while disconnected).
    pub fn typing(&self, room: &str) -> Result<(), Error> {
        validate::room_id(room)?;
        self.command(Command::Typing {
            room: room.to_owned(),
        })
    }

    /// v1.1: moves this user's read marker with a `read` frame
    /// (unanswered; dropped while disconnected; use
    /// [`crate::RestClient::mark_read`] for a confirmed one).
    pub fn mark_read_live(&self, room: &str, seq: u64) -> Result<(), Error> {
        validate::room_id(room)?;
        let seq = validate::seq(seq, "seq")?;
        self.command(Command::Read {
            room: room.to_owned(),
            seq,
        })
    }

    /// The last seq handed to the application per tracked room (what a
    /// resume starts from; persist it to resume after a restart).
    pub async fn positions(&self) -> Result<BTreeMap<String, u64>, Error> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Positions(tx))?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Where the connection is placed now (`None` while not connected).
    pub fn session(&self) -> Option<SessionInfo> {
        self.session.borrow().clone()
    }

    /// Waits until the state is `want` (or the connection stopped).
    pub async fn wait_for_state(&self, want: ConnectionState) -> ConnectionState {
        let mut rx = self.state.clone();
        let result = rx
            .wait_for(|s| *s == want || *s == ConnectionState::Disconnected)
            .await
            .map(|s| *s);
        result.unwrap_or(ConnectionState::Disconnected)
    }

    /// Closes the connection; pending sends fail with [`Error::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

type Reply = oneshot::Sender<Result<SendAck, Error>>;
type Opening = Pin<Box<dyn Future<Output = Result<Box<dyn Socket>, Error>> + Send>>;

struct FillDone {
    gap: Gap,
    result: Result<Vec<Message>, Error>,
}

/// What a background task (a history read) reports to the driver.
enum Background {
    Fill(FillDone),
    /// The latest seq of a room tracked with no start (`track(room, None)`).
    Start {
        room: String,
        result: Result<u64, Error>,
    },
}

struct Driver {
    transport: Arc<dyn Transport>,
    config: ConnectionConfig,
    cursors: RoomCursors<Message>,
    outbox: Outbox<Reply>,
    backoff: Backoff,
    rng: StdRng,
    start: Instant,
    events: mpsc::UnboundedSender<Event>,
    state_tx: watch::Sender<ConnectionState>,
    session_tx: watch::Sender<Option<SessionInfo>>,
    commands: mpsc::UnboundedReceiver<Command>,
    fill_tx: mpsc::UnboundedSender<Background>,
    fill_rx: mpsc::UnboundedReceiver<Background>,
    /// Settled by the first welcome or a fatal error.
    ready: Option<oneshot::Sender<Result<(), Error>>>,
    stopped: bool,

    socket: Option<Box<dyn Socket>>,
    opening: Option<Opening>,
    welcomed: bool,
    ever_connected: bool,
    /// When to start the next attempt (no socket, no attempt under way).
    reconnect_at: Option<u64>,
    /// The delay a `reconnect` frame asked for, used once the socket closes.
    reconnect_after: Option<u64>,
    welcome_deadline: Option<u64>,
    /// After a `reconnect` frame: stop waiting for the close at this time.
    drain_deadline: Option<u64>,
    last_frame_at: u64,
    ping_outstanding: bool,
    /// The rooms of each resume frame still waiting for its `resumed`.
    resumes_pending: VecDeque<Vec<String>>,
    resume_started_at: Option<u64>,
    resume_retry_at: Option<u64>,
    /// Rooms with a gap fill under way.
    fills: HashSet<String>,
    typing_sent_at: HashMap<String, u64>,
}

async fn recv_socket(socket: &mut Option<Box<dyn Socket>>) -> SocketEvent {
    match socket {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn poll_opening(opening: &mut Option<Opening>) -> Result<Box<dyn Socket>, Error> {
    match opening {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    fn emit(&self, event: Event) {
        // The application may have dropped the receiver; that is fine.
        let _ = self.events.send(event);
    }

    fn set_state(&self, state: ConnectionState) {
        if *self.state_tx.borrow() != state {
            self.state_tx.send_replace(state);
            self.emit(Event::State(state));
        }
    }

    async fn run(mut self) {
        while !self.stopped {
            let now = self.now();
            if self.socket.is_none()
                && self.opening.is_none()
                && self.reconnect_at.is_some_and(|t| t <= now)
            {
                self.reconnect_at = None;
                self.set_state(if self.ever_connected {
                    ConnectionState::Reconnecting
                } else {
                    ConnectionState::Connecting
                });
                let transport = self.transport.clone();
                self.opening = Some(Box::pin(async move { transport.open().await }));
            }
            let wake = self
                .next_deadline()
                .map(|at| self.start + Duration::from_millis(at));
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    // Every handle is gone: nobody can use the connection.
                    None => self.close().await,
                },
                event = recv_socket(&mut self.socket) => self.on_socket_event(event).await,
                opened = poll_opening(&mut self.opening) => {
                    self.opening = None;
                    self.on_opened(opened).await;
                }
                Some(done) = self.fill_rx.recv() => match done {
                    Background::Fill(fill) => self.on_fill(fill),
                    Background::Start { room, result } => self.on_start(room, result),
                },
                _ = sleep_until_opt(wake) => self.on_timers().await,
            }
        }
    }

    // --- deadlines -----------------------------------------------------------

    fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: Option<u64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.socket.is_none() && self.opening.is_none() {
            consider(self.reconnect_at);
        }
        consider(self.welcome_deadline);
        consider(self.drain_deadline);
        consider(self.resume_retry_at);
        if self.welcomed {
            consider(
                self.outbox
                    .next_deadline(Self::ms(self.config.send_timeout)),
            );
            let ping = Self::ms(self.config.ping_interval);
            consider(Some(if self.ping_outstanding {
                self.last_frame_at + ping + Self::ms(self.config.pong_timeout)
            } else {
                self.last_frame_at + ping
            }));
        }
        consider(self.next_gap_due());
        next
    }

    /// When the next gap fill is due; rooms with a fill under way wait for
    /// it. While a resume is under way it replays what is missing anyway,
    /// so gaps are filled only if it stalls.
    fn next_gap_due(&self) -> Option<u64> {
        let delay = Self::ms(self.config.gap_fill_delay);
        let due = self
            .cursors
            .gap_clocks()
            .filter(|(room, _)| !self.fills.contains(*room))
            .map(|(_, since)| since + delay)
            .min()?;
        Some(match self.resume_started_at {
            Some(started) => due.max(started + Self::ms(self.config.resume_timeout)),
            None => due,
        })
    }

    async fn on_timers(&mut self) {
        let now = self.now();
        if self.welcome_deadline.is_some_and(|t| t <= now) {
            self.welcome_deadline = None;
            let error = Error::Network {
                context: "connecting".into(),
                detail: format!("no welcome within {:?}", self.config.welcome_timeout),
            };
            self.abandon_socket("no welcome", Some(error)).await;
        }
        if self.drain_deadline.is_some_and(|t| t <= now) {
            // The server asked us to come back and did not close in time.
            self.drain_deadline = None;
            self.reconnect_after = Some(0);
            self.abandon_socket("server draining", None).await;
        }
        if self.resume_retry_at.is_some_and(|t| t <= now) {
            self.resume_retry_at = None;
            self.send_resume().await;
        }
        if self.welcomed {
            if self
                .outbox
                .has_timed_out(now, Self::ms(self.config.send_timeout))
            {
                self.abandon_socket("send timed out", None).await;
            } else {
                self.flush_outbox().await;
            }
        }
        if self.welcomed {
            self.check_liveness(now).await;
        }
        if self
            .resume_started_at
            .is_some_and(|t| now.saturating_sub(t) >= Self::ms(self.config.resume_timeout))
        {
            self.resume_started_at = None;
        }
        if self.next_gap_due().is_some_and(|t| t <= now) {
            self.fill_due_gaps(now);
        }
    }

    async fn check_liveness(&mut self, now: u64) {
        let ping = Self::ms(self.config.ping_interval);
        let pong = Self::ms(self.config.pong_timeout);
        let silent = now.saturating_sub(self.last_frame_at);
        if silent >= ping + pong {
            self.abandon_socket("connection silent", None).await;
        } else if silent >= ping && !self.ping_outstanding {
            self.ping_outstanding = self
                .write(&ClientFrame::Ping {
                    nonce: serde_json::json!(now),
                })
                .await;
        }
    }

    // --- commands --------------------------------------------------------------

    async fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Send {
                room,
                body,
                client_msg_id,
                reply,
            } => {
                // Our own message comes back on this session: the room
                // starts there at the latest.
                if !self.cursors.is_tracked(&room) {
                    self.cursors.track(&room, None, now);
                }
                self.outbox.add(client_msg_id, room, body, reply, now);
                self.flush_outbox().await;
            }
            Command::Track { room, after } => {
                let known = self.cursors.last(&room).is_some();
                let tracked = self.cursors.is_tracked(&room);
                let ready = self.cursors.track(&room, after, now);
                self.deliver(ready);
                if !tracked && after.is_none() {
                    self.look_up_start(room.clone());
                }
                if let (false, Some(after), true) = (known, after, self.welcomed) {
                    // Replay what the application lacks; live messages that
                    // overlap are dropped by seq.
                    self.write_resume(BTreeMap::from([(room, after)])).await;
                }
            }
            Command::Forget { room } => self.cursors.forget(&room),
            Command::Typing { room } => {
                let throttle = Self::ms(self.config.typing_throttle);
                let recent = self
                    .typing_sent_at
                    .get(&room)
                    .is_some_and(|t| now.saturating_sub(*t) < throttle);
                if !recent
                    && self
                        .write(&ClientFrame::Typing { room: room.clone() })
                        .await
                {
                    self.typing_sent_at.insert(room, now);
                }
            }
            Command::Read { room, seq } => {
                self.write(&ClientFrame::Read { room, seq }).await;
            }
            Command::Positions(reply) => {
                let _ = reply.send(self.cursors.resume_points());
            }
            Command::Close(reply) => {
                self.close().await;
                let _ = reply.send(());
            }
        }
    }

    /// Closes for good at the application's request.
    async fn close(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), socket.close(1000, "client closed"))
                    .await;
        }
        self.finish(Error::Closed);
        self.set_state(ConnectionState::Disconnected);
    }

    /// A failure no retry can fix: tell everyone waiting, and stop.
    async fn stop(&mut self, error: Error) {
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                socket.close(CLIENT_GAVE_UP, "giving up"),
            )
            .await;
        }
        self.emit(Event::Stopped(error.clone()));
        self.finish(error);
        self.set_state(ConnectionState::Disconnected);
    }

    fn finish(&mut self, error: Error) {
        self.stopped = true;
        self.opening = None;
        self.welcomed = false;
        self.session_tx.send_replace(None);
        for entry in self.outbox.take_all() {
            let _ = entry.settle.send(Err(error.clone()));
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(error));
        }
    }

    // --- connection life cycle ---------------------------------------------------

    async fn on_opened(&mut self, opened: Result<Box<dyn Socket>, Error>) {
        let now = self.now();
        match opened {
            Ok(socket) => {
                self.socket = Some(socket);
                self.welcomed = false;
                self.welcome_deadline = Some(now + Self::ms(self.config.welcome_timeout));
                self.last_frame_at = now;
            }
            Err(error) => {
                if is_fatal(&error) || (self.config.fail_fast && !self.ever_connected) {
                    self.stop(error).await;
                    return;
                }
                self.emit(Event::Error(error));
                let delay = self.backoff.next_delay_ms(&mut self.rng);
                self.reconnect_at = Some(now + delay);
            }
        }
    }

    /// The socket closed (or was abandoned): requeue sends and plan the
    /// next attempt.
    fn socket_gone(&mut self, code: Option<u16>, error: Option<Error>) {
        let now = self.now();
        let was_welcomed = self.welcomed;
        self.socket = None;
        self.welcomed = false;
        self.session_tx.send_replace(None);
        self.resumes_pending.clear();
        self.resume_started_at = None;
        self.resume_retry_at = None;
        self.ping_outstanding = false;
        self.welcome_deadline = None;
        self.drain_deadline = None;
        self.outbox.requeue_inflight(now);
        if let Some(error) = error {
            self.emit(Event::Error(error));
        }
        let delay = if let Some(after) = self.reconnect_after.take() {
            after
        } else if code == Some(SERVICE_RESTART) {
            // Draining without a `reconnect` frame: come back soon, spread out.
            self.rng
                .random_range(0..=self.config.reconnect.min_delay_ms.max(1))
        } else {
            self.backoff.next_delay_ms(&mut self.rng)
        };
        if was_welcomed {
            self.set_state(ConnectionState::Reconnecting);
        }
        self.reconnect_at = Some(now + delay);
    }

    /// Gives up on the current socket at once, without waiting for a close
    /// handshake (the peer may be frozen).
    async fn abandon_socket(&mut self, reason: &'static str, error: Option<Error>) {
        let Some(mut socket) = self.socket.take() else {
            return;
        };
        if self.config.fail_fast && !self.ever_connected {
            let error = error.unwrap_or_else(|| Error::Network {
                context: "connecting".into(),
                detail: reason.into(),
            });
            self.stop(error).await;
            return;
        }
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), socket.close(CLIENT_GAVE_UP, reason))
                    .await;
        });
        self.socket_gone(Some(CLIENT_GAVE_UP), error);
    }

    async fn on_socket_event(&mut self, event: SocketEvent) {
        let now = self.now();
        match event {
            SocketEvent::Text(text) => {
                self.last_frame_at = now;
                self.ping_outstanding = false;
                match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(frame) => self.on_frame(frame).await,
                    Err(e) => self.emit(Event::ProtocolError(FrameProblem {
                        detail: e.to_string(),
                        text: text.chars().take(200).collect(),
                    })),
                }
            }
            SocketEvent::Binary(len) => {
                self.last_frame_at = now;
                self.emit(Event::ProtocolError(FrameProblem {
                    detail: "a binary frame".into(),
                    text: format!("({len} bytes)"),
                }));
            }
            SocketEvent::Closed(code) => {
                if self.config.fail_fast && !self.ever_connected {
                    self.socket = None;
                    self.stop(Error::Network {
                        context: "connecting".into(),
                        detail: format!(
                            "the chat server closed the connection before its welcome (code {})",
                            code.map_or("none".to_string(), |c| c.to_string())
                        ),
                    })
                    .await;
                    return;
                }
                self.socket_gone(code, None);
            }
        }
    }

    // --- frames ------------------------------------------------------------------

    async fn on_frame(&mut self, frame: ServerFrame) {
        let now = self.now();
        match frame {
            ServerFrame::Welcome {
                server_id,
                user,
                session,
            } => {
                let session = SessionInfo {
                    server_id,
                    user,
                    session,
                };
                self.welcome_deadline = None;
                self.welcomed = true;
                self.ever_connected = true;
                self.backoff.reset();
                self.session_tx.send_replace(Some(session.clone()));
                self.set_state(ConnectionState::Connected);
                self.emit(Event::Session(session));
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
                self.send_resume().await;
                self.flush_outbox().await;
            }
            ServerFrame::Message(message) => {
                let ready = self.cursors.offer(message, now);
                self.deliver(ready);
            }
            ServerFrame::Ack {
                client_msg_id,
                room,
                seq,
                id,
            } => {
                if let Some(cid) = client_msg_id {
                    if let Some(entry) = self.outbox.settle(&cid) {
                        let _ = entry.settle.send(Ok(SendAck {
                            room: room.clone(),
                            seq,
                            id,
                            client_msg_id: cid,
                        }));
                    }
                }
                // Our message comes back as a `message` frame; if that is
                // lost, the ack still says it exists, so a gap fill gets it.
                self.cursors.note_exists(&room, seq, now);
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
            } => self.on_error_frame(code, message, client_msg_id).await,
            ServerFrame::Resumed { rooms } => self.on_resumed(rooms),
            ServerFrame::Typing { room, user } => self.emit(Event::Typing { room, user }),
            ServerFrame::Presence {
                room,
                user,
                online,
                ts,
            } => self.emit(Event::Presence {
                room,
                user,
                online,
                ts,
            }),
            ServerFrame::Read { room, user, seq } => self.emit(Event::Read { room, user, seq }),
            ServerFrame::Reconnect { after_ms, .. } => {
                // The server is draining and will close with 1012; come back
                // after `after_ms`, and do not wait for the close longer.
                self.reconnect_after = Some(after_ms);
                self.drain_deadline = Some(now + after_ms);
            }
            ServerFrame::Pong { .. } => {}
        }
    }

    async fn on_error_frame(
        &mut self,
        code: ErrorCode,
        message: String,
        client_msg_id: Option<String>,
    ) {
        let now = self.now();
        let entry = client_msg_id
            .as_deref()
            .and_then(|cid| self.outbox.get(cid))
            .map(|e| (e.client_msg_id.clone(), e.attempts));
        if let Some((cid, attempts)) = entry {
            match code {
                ErrorCode::RateLimited => {
                    let until = now + self.retry_delay(attempts);
                    self.outbox.pause(&cid, until);
                }
                ErrorCode::Unavailable => {
                    let at = now + self.retry_delay(attempts);
                    self.outbox.retry_at(&cid, at);
                }
                _ => {
                    if let Some(entry) = self.outbox.settle(&cid) {
                        let _ = entry.settle.send(Err(Error::SendRefused {
                            room: entry.room,
                            client_msg_id: cid,
                            code,
                            message,
                        }));
                    }
                }
            }
            return;
        }
        if code == ErrorCode::Unavailable && !self.resumes_pending.is_empty() {
            // The server could not finish a resume and sends no `resumed`:
            // resume again.
            self.resumes_pending.clear();
            self.resume_started_at = None;
            self.resume_retry_at = Some(now + self.retry_delay(1));
        }
        self.emit(Event::Error(Error::Server { code, message }));
    }

    /// Full-jitter delay for the n-th retry of a refused send, at least 50 ms.
    fn retry_delay(&mut self, attempt: u32) -> u64 {
        let ceiling = (Self::ms(self.config.retry_base) << attempt.min(20))
            .min(Self::ms(self.config.max_retry_delay));
        50 + self.rng.random_range(0..=ceiling)
    }

    /// The end of a replay. Everything replayed came before this frame, so
    /// a room still below its latest seq lacks messages (a gap fill gets or
    /// skips them); a room asked for but missing from the answer was
    /// refused (no longer a member) and is no longer tracked.
    fn on_resumed(&mut self, latest: BTreeMap<String, u64>) {
        let now = self.now();
        let asked = self.resumes_pending.pop_front().unwrap_or_default();
        for room in asked {
            match latest.get(&room) {
                None => self.cursors.forget(&room),
                Some(seq) => self.cursors.note_exists(&room, *seq, now),
            }
        }
        if self.resumes_pending.is_empty() {
            self.resume_started_at = None;
        }
    }

    fn deliver(&self, messages: Vec<Message>) {
        for m in messages {
            self.emit(Event::Message(m));
        }
    }

    // --- writing -------------------------------------------------------------------

    /// Writes one frame on a welcomed socket; `false` when there is none or
    /// the write failed (the socket is then abandoned).
    async fn write(&mut self, frame: &ClientFrame) -> bool {
        if !self.welcomed {
            return false;
        }
        let Some(socket) = self.socket.as_mut() else {
            return false;
        };
        let text = match serde_json::to_string(frame) {
            Ok(t) => t,
            Err(_) => return false,
        };
        match socket.send(text).await {
            Ok(()) => true,
            Err(e) => {
                self.abandon_socket("write failed", Some(e)).await;
                false
            }
        }
    }

    async fn send_resume(&mut self) {
        let points = self.cursors.resume_points();
        if points.is_empty() {
            return;
        }
        self.resumes_pending.clear();
        let mut chunk = BTreeMap::new();
        for (room, seq) in points {
            chunk.insert(room, seq);
            if chunk.len() == MAX_RESUME_ROOMS {
                self.write_resume(std::mem::take(&mut chunk)).await;
            }
        }
        if !chunk.is_empty() {
            self.write_resume(chunk).await;
        }
    }

    async fn write_resume(&mut self, rooms: BTreeMap<String, u64>) {
        let names: Vec<String> = rooms.keys().cloned().collect();
        if self.write(&ClientFrame::Resume { rooms }).await {
            self.resumes_pending.push_back(names);
            if self.resume_started_at.is_none() {
                self.resume_started_at = Some(self.now());
            }
        }
    }

    async fn flush_outbox(&mut self) {
        if !self.welcomed {
            return;
        }
        let now = self.now();
        for (client_msg_id, room, body) in self.outbox.due(now) {
            let frame = ClientFrame::Send {
                room,
                body,
                client_msg_id: Some(client_msg_id),
            };
            if !self.write(&frame).await {
                break; // the socket is gone; everything inflight was requeued
            }
        }
    }

    // --- gaps ------------------------------------------------------------------------

    fn fill_due_gaps(&mut self, now: u64) {
        let delay = Self::ms(self.config.gap_fill_delay);
        for gap in self.cursors.due_gaps(now, delay) {
            if !self.fills.insert(gap.room.clone()) {
                continue;
            }
            let transport = self.transport.clone();
            let done = self.fill_tx.clone();
            tokio::spawn(async move {
                let result = fetch_gap(transport.as_ref(), &gap).await;
                let _ = done.send(Background::Fill(FillDone { gap, result }));
            });
        }
    }

    /// A room tracked from "now": its latest seq, read from history, is
    /// where it starts. Until then (or if the read fails) it starts at the
    /// first message that arrives.
    fn look_up_start(&self, room: String) {
        let transport = self.transport.clone();
        let done = self.fill_tx.clone();
        tokio::spawn(async move {
            let result = transport
                .history(&room, HistoryQuery::latest().limit(1))
                .await
                .map(|page| page.last().map_or(0, |m| m.seq));
            let _ = done.send(Background::Start { room, result });
        });
    }

    fn on_start(&mut self, room: String, result: Result<u64, Error>) {
        let now = self.now();
        match result {
            // A message that arrived meanwhile set the start already; the
            // latest seq then only says what exists.
            Ok(latest) if self.cursors.last(&room).is_some() => {
                self.cursors.note_exists(&room, latest, now)
            }
            Ok(latest) if self.cursors.is_tracked(&room) => {
                let ready = self.cursors.track(&room, Some(latest), now);
                self.deliver(ready);
            }
            Ok(_) => {} // forgotten meanwhile
            Err(e) => tracing::debug!(error = %e, room, "looking up where a room starts failed"),
        }
    }

    fn on_fill(&mut self, fill: FillDone) {
        let now = self.now();
        self.fills.remove(&fill.gap.room);
        match fill.result {
            Ok(messages) => {
                for m in messages {
                    let ready = self.cursors.offer(m, now);
                    self.deliver(ready);
                }
                // What history lacks was trimmed: skip it.
                let ready = self.cursors.skip_gap(&fill.gap, now);
                self.deliver(ready);
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Forbidden) => {
                let ready = self.cursors.skip_gap(&fill.gap, now);
                self.deliver(ready);
            }
            Err(e) => {
                self.cursors.postpone_gap(&fill.gap.room, now);
                self.emit(Event::Error(e));
            }
        }
    }
}

/// Fetches a gap's messages from history, page by page.
async fn fetch_gap(transport: &dyn Transport, gap: &Gap) -> Result<Vec<Message>, Error> {
    let mut out = Vec::new();
    let mut after = gap.after;
    while after + 1 < gap.before {
        let limit = (gap.before - 1 - after).min(MAX_PAGE) as u32;
        let query = HistoryQuery {
            after: Some(after),
            before: Some(gap.before),
            limit: Some(limit),
        };
        let page = transport.history(&gap.room, query).await?;
        let Some(last) = page.last().map(|m| m.seq) else {
            break;
        };
        if last <= after {
            break; // not ascending: do not loop forever on a broken server
        }
        after = last;
        out.extend(page);
    }
    Ok(out)
}

/// Errors of `/v1/connect` (or the token provider) that retrying cannot
/// fix: a refused token (after asking the provider again), a service token
/// (403), a bad request.
fn is_fatal(error: &Error) -> bool {
    matches!(
        error,
        Error::Api { .. } | Error::Token(_) | Error::InvalidArgument { .. }
    ) && matches!(
        error.kind(),
        ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::NotFound
            | ErrorKind::InvalidRequest
            | ErrorKind::InvalidArgument
    )
}

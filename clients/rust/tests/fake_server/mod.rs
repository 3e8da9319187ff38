//! A fake chat service behind the `Transport` seam: an in-memory store with
//! the contract's semantics (seqs, `client_msg_id` dedup per sender,
//! resume, history) and seeded faults on every step (dropped, frozen and
//! draining connections, lost and duplicated deliveries, lost acks,
//! `unavailable` and `rate_limited` refusals, malformed frames, failed
//! opens). No sockets: frames are strings on channels, so the tests run on
//! tokio's paused clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_client::protocol::{ClientFrame, ErrorCode, ServerFrame};
use chat_client::{Error, HistoryQuery, Message, Socket, SocketEvent, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// Probabilities of each fault (0.0 = never).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub open_fails: f64,
    /// After handling a client frame, the connection drops (no close frame).
    pub drop_after_frame: f64,
    /// ...or is frozen: nothing arrives or leaves any more, no close.
    pub freeze_after_frame: f64,
    /// ...or drains: `reconnect` then close 1012.
    pub drain_after_frame: f64,
    pub lose_delivery: f64,
    pub duplicate_delivery: f64,
    pub lose_ack: f64,
    pub unavailable: f64,
    pub rate_limited: f64,
    pub malformed_frame: f64,
}

impl Faults {
    pub fn chaos() -> Faults {
        Faults {
            open_fails: 0.2,
            drop_after_frame: 0.03,
            freeze_after_frame: 0.01,
            drain_after_frame: 0.02,
            lose_delivery: 0.1,
            duplicate_delivery: 0.1,
            lose_ack: 0.05,
            unavailable: 0.05,
            rate_limited: 0.03,
            malformed_frame: 0.05,
        }
    }
}

struct Conn {
    tx: mpsc::UnboundedSender<SocketEvent>,
    alive: bool,
    frozen: bool,
}

pub struct State {
    pub rooms: BTreeMap<String, Vec<Message>>,
    dedup: HashMap<(String, String), Message>,
    conns: Vec<Conn>,
    rng: StdRng,
    pub faults: Faults,
    pub opens: u32,
    pub welcomes: u32,
    /// Every `send` frame that reached the server: client_msg_id -> count.
    pub send_frames: HashMap<String, u32>,
    pub malformed_sent: u32,
    /// Frames written by clients, in order (for assertions).
    pub client_frames: Vec<ClientFrame>,
    next_id: u64,
    /// Open fails with this error (e.g. a 403) when set.
    pub open_error: Option<Error>,
    /// Where `open` pretends the user is.
    pub user: String,
}

#[derive(Clone)]
pub struct FakeServer(pub Arc<Mutex<State>>);

impl FakeServer {
    pub fn new(seed: u64, rooms: &[&str]) -> FakeServer {
        FakeServer(Arc::new(Mutex::new(State {
            rooms: rooms.iter().map(|r| (r.to_string(), Vec::new())).collect(),
            dedup: HashMap::new(),
            conns: Vec::new(),
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            faults: Faults::default(),
            opens: 0,
            welcomes: 0,
            send_frames: HashMap::new(),
            malformed_sent: 0,
            client_frames: Vec::new(),
            next_id: 0,
            open_error: None,
            user: "alice".into(),
        })))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Another member posts (as over REST): stored, then delivered live.
    pub fn post(&self, from: &str, room: &str, body: &str) -> Message {
        let mut s = self.lock();
        let m = s.store(from, room, body, None);
        s.deliver_all(&m);
        m
    }

    /// Drops every live connection (no close frame).
    pub fn drop_all(&self) {
        let mut s = self.lock();
        for i in 0..s.conns.len() {
            s.kill(i, None);
        }
    }

    /// Sends a raw text frame on every live connection.
    pub fn push_raw(&self, text: &str) {
        let s = self.lock();
        for c in s.conns.iter().filter(|c| c.alive && !c.frozen) {
            let _ = c.tx.send(SocketEvent::Text(text.to_owned()));
        }
    }

    pub fn push_frame(&self, frame: &ServerFrame) {
        self.push_raw(&frame.to_json());
    }

    pub fn messages(&self, room: &str) -> Vec<Message> {
        self.lock().rooms.get(room).cloned().unwrap_or_default()
    }
}

impl State {
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    fn store(&mut self, from: &str, room: &str, body: &str, cid: Option<&str>) -> Message {
        if let Some(cid) = cid {
            if let Some(m) = self.dedup.get(&(from.to_owned(), cid.to_owned())) {
                return m.clone();
            }
        }
        self.next_id += 1;
        let list = self.rooms.entry(room.to_owned()).or_default();
        let m = Message {
            room: room.to_owned(),
            seq: list.len() as u64 + 1,
            id: format!("m_{}", self.next_id),
            from: from.to_owned(),
            body: body.to_owned(),
            ts: self.next_id,
            client_msg_id: cid.map(str::to_owned),
        };
        list.push(m.clone());
        if let Some(cid) = cid {
            self.dedup
                .insert((from.to_owned(), cid.to_owned()), m.clone());
        }
        m
    }

    fn emit(&mut self, conn: usize, frame: &ServerFrame) {
        if self.chance(self.faults.malformed_frame) {
            self.malformed_sent += 1;
            let junk = [
                "{not json",
                r#"{"type":"message","room":"x"}"#,
                r#"{"type":"warp"}"#,
                "[]",
            ];
            let pick = junk[self.rng.random_range(0..junk.len())];
            let c = &self.conns[conn];
            if c.alive && !c.frozen {
                let _ = c.tx.send(SocketEvent::Text(pick.into()));
            }
        }
        let c = &self.conns[conn];
        if c.alive && !c.frozen {
            let _ = c.tx.send(SocketEvent::Text(frame.to_json()));
        }
    }

    fn deliver_all(&mut self, m: &Message) {
        for i in 0..self.conns.len() {
            if !self.conns[i].alive {
                continue;
            }
            if self.chance(self.faults.lose_delivery) {
                continue;
            }
            self.emit(i, &ServerFrame::Message(m.clone()));
            if self.chance(self.faults.duplicate_delivery) {
                self.emit(i, &ServerFrame::Message(m.clone()));
            }
        }
    }

    fn kill(&mut self, conn: usize, code: Option<u16>) {
        let c = &mut self.conns[conn];
        if c.alive {
            c.alive = false;
            if !c.frozen {
                let _ = c.tx.send(SocketEvent::Closed(code));
            }
        }
    }

    fn handle(&mut self, conn: usize, frame: ClientFrame) {
        self.client_frames.push(frame.clone());
        let user = self.user.clone();
        match frame {
            ClientFrame::Send {
                room,
                body,
                client_msg_id,
            } => {
                if let Some(cid) = &client_msg_id {
                    *self.send_frames.entry(cid.clone()).or_default() += 1;
                }
                if self.chance(self.faults.unavailable) {
                    self.emit(
                        conn,
                        &ServerFrame::Error {
                            code: ErrorCode::Unavailable,
                            message: "try again".into(),
                            client_msg_id,
                        },
                    );
                } else if self.chance(self.faults.rate_limited) {
                    self.emit(
                        conn,
                        &ServerFrame::Error {
                            code: ErrorCode::RateLimited,
                            message: "slow down".into(),
                            client_msg_id,
                        },
                    );
                } else if !self.rooms.contains_key(&room) {
                    self.emit(
                        conn,
                        &ServerFrame::Error {
                            code: ErrorCode::Forbidden,
                            message: "not a member".into(),
                            client_msg_id,
                        },
                    );
                } else {
                    let existed = client_msg_id
                        .as_ref()
                        .is_some_and(|cid| self.dedup.contains_key(&(user.clone(), cid.clone())));
                    let m = self.store(&user, &room, &body, client_msg_id.as_deref());
                    if !existed {
                        self.deliver_all(&m);
                    }
                    if !self.chance(self.faults.lose_ack) {
                        self.emit(
                            conn,
                            &ServerFrame::Ack {
                                client_msg_id,
                                room,
                                seq: m.seq,
                                id: m.id,
                            },
                        );
                    }
                }
            }
            ClientFrame::Resume { rooms } => {
                let mut latest = BTreeMap::new();
                for (room, after) in rooms {
                    let Some(list) = self.rooms.get(&room).cloned() else {
                        continue; // refused: missing from `resumed`
                    };
                    for m in list.iter().filter(|m| m.seq > after) {
                        self.emit(conn, &ServerFrame::Message(m.clone()));
                        if self.chance(self.faults.duplicate_delivery) {
                            self.emit(conn, &ServerFrame::Message(m.clone()));
                        }
                    }
                    latest.insert(room, list.len() as u64);
                }
                self.emit(conn, &ServerFrame::Resumed { rooms: latest });
            }
            ClientFrame::Ping { nonce } => self.emit(conn, &ServerFrame::Pong { nonce }),
            ClientFrame::Typing { .. } | ClientFrame::Read { .. } => {}
        }
        // Faults of the connection itself, after the frame.
        if self.chance(self.faults.drop_after_frame) {
            self.kill(conn, None);
        } else if self.chance(self.faults.freeze_after_frame) {
            self.conns[conn].frozen = true;
        } else if self.chance(self.faults.drain_after_frame) {
            let after_ms = self.rng.random_range(0..300);
            self.emit(
                conn,
                &ServerFrame::Reconnect {
                    reason: "draining".into(),
                    after_ms,
                },
            );
            self.kill(conn, Some(1012));
        }
    }
}

pub struct FakeSocket {
    server: FakeServer,
    conn: usize,
    rx: mpsc::UnboundedReceiver<SocketEvent>,
}

#[async_trait]
impl Socket for FakeSocket {
    async fn send(&mut self, text: String) -> Result<(), Error> {
        let mut s = self.server.lock();
        let c = &s.conns[self.conn];
        if !c.alive || c.frozen {
            // Written into the void, as on a dead TCP connection.
            return Ok(());
        }
        let frame: ClientFrame =
            serde_json::from_str(&text).expect("the client writes valid frames");
        s.handle(self.conn, frame);
        Ok(())
    }

    async fn recv(&mut self) -> SocketEvent {
        self.rx.recv().await.unwrap_or(SocketEvent::Closed(None))
    }

    async fn close(&mut self, _code: u16, _reason: &str) {
        let mut s = self.server.lock();
        s.conns[self.conn].alive = false;
    }
}

#[async_trait]
impl Transport for FakeServer {
    async fn open(&self) -> Result<Box<dyn Socket>, Error> {
        let mut s = self.lock();
        s.opens += 1;
        if let Some(e) = s.open_error.clone() {
            return Err(e);
        }
        let p = s.faults.open_fails;
        if s.chance(p) {
            return Err(Error::Network {
                context: "POST /v1/connect".into(),
                detail: "connection refused (fake)".into(),
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.conns.push(Conn {
            tx,
            alive: true,
            frozen: false,
        });
        let conn = s.conns.len() - 1;
        s.welcomes += 1;
        let welcome = ServerFrame::Welcome {
            server_id: format!("fake-{}", s.welcomes % 3),
            user: s.user.clone(),
            session: format!("s{conn}"),
        };
        let _ = s.conns[conn].tx.send(SocketEvent::Text(welcome.to_json()));
        drop(s);
        Ok(Box::new(FakeSocket {
            server: self.clone(),
            conn,
            rx,
        }))
    }

    async fn history(&self, room: &str, query: HistoryQuery) -> Result<Vec<Message>, Error> {
        let mut s = self.lock();
        let p = s.faults.open_fails / 2.0;
        if s.chance(p) {
            return Err(Error::Network {
                context: "GET history".into(),
                detail: "timeout (fake)".into(),
            });
        }
        let list = s.rooms.get(room).cloned().unwrap_or_default();
        let limit = query.limit.unwrap_or(50) as usize;
        let after = query.after.unwrap_or(0);
        let before = query.before.unwrap_or(u64::MAX);
        let page: Vec<Message> = if query.after.is_some() {
            list.into_iter()
                .filter(|m| m.seq > after && m.seq < before)
                .take(limit)
                .collect()
        } else {
            let below: Vec<Message> = list.into_iter().filter(|m| m.seq < before).collect();
            below[below.len().saturating_sub(limit)..].to_vec()
        };
        Ok(page)
    }
}

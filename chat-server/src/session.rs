//! One client session: a single task owns the socket, so frames to this
//! client are written in one place, in order. It reacts to client frames,
//! its [`Mailbox`] (deliveries from the hub, the catch-up map, due pings,
//! the drain) and due gap fills.
//!
//! Acks are written by this task right after the store confirms the append
//! and before the message is routed, so on the sender's connection the ack
//! always precedes the message itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use chat_protocol::frame::close_code;
use chat_protocol::ids::{is_plausible_room_id, new_id};
use chat_protocol::{now_ms, ClientFrame, ErrorCode, ServerFrame};
use chat_routing::{Delivery, DeliveryKind};
use chat_store::{NewMessage, SessionLocation, StoreError};
use futures_util::SinkExt;
use rand::Rng;

use crate::hub::SessionHandle;
use crate::mailbox::{Ending, Mail, Mailbox};
use crate::order::RoomOrder;
use crate::rate::{SendRateLimit, Verdict};
use crate::ChatServer;

/// Why the session loop ended, deciding how the socket is closed.
enum End {
    ClientLeft,
    Drain,
    SlowConsumer,
    TooBig,
    Idle,
    Abuse,
    WriteFailed,
}

struct Session {
    server: Arc<ChatServer>,
    socket: WebSocket,
    mailbox: Arc<Mailbox>,
    user: String,
    id: String,
    order: RoomOrder,
    last_heard: Instant,
    rate: SendRateLimit,
}

/// A session's whole life. Set up here, outside the future, so that the
/// future holds neither the socket as the function's argument nor the
/// session inline: it lives as long as the connection, and its size was
/// most of an idle session's memory (docs/benchmarks.md, "Idle session
/// memory").
pub(crate) fn run(
    server: Arc<ChatServer>,
    socket: WebSocket,
    user: String,
) -> impl std::future::Future<Output = ()> + Send {
    let id = new_id("s_");
    let mailbox = Arc::new(Mailbox::new(server.config.session_queue_len.max(16)));
    server.hub.add(
        &user,
        SessionHandle {
            session: id.clone(),
            mailbox: mailbox.clone(),
        },
    );
    server.metrics.sessions_opened.inc();
    server.metrics.sessions.set(server.hub.connections() as i64);
    let session = Session {
        server: server.clone(),
        socket,
        mailbox,
        user,
        id,
        // Rooms first seen after connect wait as long as a gap would for
        // earlier seqs on other links.
        order: RoomOrder::new(
            server.hub.tracked_rooms(),
            Duration::from_millis(server.config.gap_fill_delay_ms),
        ),
        last_heard: Instant::now(),
        rate: SendRateLimit::new(
            server.config.send_rate_per_s,
            server.config.send_burst,
            server.config.abuse_close_after,
            Instant::now(),
        ),
    };
    Box::new(session).live()
}

impl Session {
    /// Takes the session boxed: a future keeps a by-value `self` twice
    /// (as the argument and as the local it is moved to).
    async fn live(mut self: Box<Self>) {
        // Boxed: setup, the error path and teardown happen once, and
        // inline their futures would count in every session's size for the
        // whole connection.
        match Box::pin(self.start()).await {
            Ok(()) => {
                let end = self.serve().await;
                Box::pin(self.close(end)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, user = %self.user, "session setup failed");
                let _ = Box::pin(self.write(&ServerFrame::error(
                    ErrorCode::Unavailable,
                    "storage unavailable; reconnect later",
                )))
                .await;
            }
        }
        // The session's rooms stop being tracked when `order` is dropped.
        let (server, user, id) = (&self.server, &self.user, &self.id);
        server.hub.remove(user, id);
        if !server.hub.has_user(user) {
            server.user_rates.forget(user);
        }
        server.metrics.sessions.set(server.hub.connections() as i64);
        // Read with the session's removal: the rooms' presence audiences,
        // for the "offline" event if this was the user's last session.
        let presence_max = server.router.fanout_limits().presence_max_room_members;
        match server
            .store
            .remove_session_announced(user, id, presence_max)
            .await
        {
            Ok(Some(gone)) => {
                Box::pin(
                    server
                        .router
                        .announce_presence_to(&gone.change, &gone.presence_audiences),
                )
                .await;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "presence removal failed; it expires by itself"),
        }
    }

    /// Registers presence, records where each room stands (messages after
    /// this point are live), then welcomes the client.
    async fn start(&mut self) -> Result<(), StoreError> {
        let store = &self.server.store;
        // Read with the session's joins: the rooms' presence audiences, for
        // the "online" event if this is the user's first session.
        let added = store
            .add_session_announced(
                &self.user,
                &SessionLocation {
                    session: self.id.clone(),
                    server_id: self.server.server_id.clone(),
                },
                self.server.config.presence_ttl_ms,
                self.server.router.fanout_limits().presence_max_room_members,
            )
            .await?;
        for (room, seq) in added.rooms {
            self.order.set_baseline(&room, seq);
        }
        // This session may put the user on one more chat server: every
        // server's share of the user's send limit shrinks (here before the
        // first frame is read, elsewhere at their next presence refresh).
        // The store answered with the user's sessions: no read needed.
        self.server
            .set_send_shares(HashMap::from([(self.user.clone(), added.sessions)]))
            .await;
        if let Some(change) = added.came_online {
            // Off the session's path: the welcome does not wait for it.
            let router = self.server.router.clone();
            let audiences = added.presence_audiences;
            tokio::spawn(async move { router.announce_presence_to(&change, &audiences).await });
        }
        let welcome = ServerFrame::Welcome {
            server_id: self.server.server_id.clone(),
            user: self.user.clone(),
            session: self.id.clone(),
        };
        let _ = self.write(&welcome).await;
        Ok(())
    }

    async fn serve(&mut self) -> End {
        const MAX_BATCH: usize = 128;
        let gap_delay = Duration::from_millis(self.server.config.gap_fill_delay_ms);
        let idle_timeout = Duration::from_millis(self.server.config.idle_timeout_ms.max(1000));
        loop {
            let fill_at = self.order.next_fill_at(gap_delay);
            tokio::select! {
                biased;
                ending = self.mailbox.ending() => {
                    return match ending {
                        Ending::Drain => End::Drain,
                        Ending::SlowConsumer => End::SlowConsumer,
                    };
                }
                incoming = self.socket.recv() => {
                    self.last_heard = Instant::now();
                    match incoming {
                        // Client frames are boxed: inline, the largest of
                        // these futures would be part of every idle
                        // session's memory.
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Err(end) = Box::pin(self.on_text(text.as_str())).await { return end; }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            let frame = ServerFrame::error(ErrorCode::InvalidFrame, "frames must be text");
                            if Box::pin(self.write(&frame)).await.is_err() { return End::WriteFailed; }
                        }
                        Some(Ok(WsMessage::Close(_))) | None => return End::ClientLeft,
                        Some(Ok(_)) => {} // ping/pong: answered by the library
                        Some(Err(e)) => {
                            return if is_too_big(&e) { End::TooBig } else { End::ClientLeft };
                        }
                    }
                }
                // Deliveries are taken up to a bound at a time, so that
                // client frames are still read under a flood.
                mail = self.mailbox.recv(MAX_BATCH) => match mail {
                    // Boxed like the client frames: inline, this future
                    // (480 bytes) was the largest part of an idle session's
                    // task; one allocation per batch is noise next to the
                    // write it does.
                    Mail::Deliveries(batch) => {
                        if let Err(end) = Box::pin(self.on_deliveries(batch)).await { return end; }
                    }
                    // The server's catch-up map: rooms this session is
                    // behind in open a gap, filled after `gap_fill_delay`
                    // unless the deliveries arrive first.
                    Mail::CatchUp(latest) => self.order.note_latest_all(&latest, Instant::now()),
                    Mail::PingDue => {
                        if self.last_heard.elapsed() > idle_timeout {
                            return End::Idle;
                        }
                        if Box::pin(self.socket.send(WsMessage::Ping(Default::default()))).await.is_err() {
                            return End::WriteFailed;
                        }
                    }
                },
                _ = sleep_until(fill_at) => {
                    if let Err(end) = Box::pin(self.fill_gaps(gap_delay)).await { return end; }
                }
            }
        }
    }

    async fn close(&mut self, end: End) {
        let (code, reason) = match end {
            End::ClientLeft | End::WriteFailed => return,
            End::Drain => {
                let jitter = self.server.config.reconnect_jitter_ms;
                let after_ms = if jitter == 0 {
                    0
                } else {
                    rand::rng().random_range(0..=jitter)
                };
                let frame = ServerFrame::Reconnect {
                    reason: "draining".into(),
                    after_ms,
                };
                let _ = self.write(&frame).await;
                (close_code::SERVICE_RESTART, "server draining")
            }
            End::SlowConsumer => {
                self.server.metrics.slow_consumers.inc();
                (close_code::POLICY_VIOLATION, "slow consumer")
            }
            End::TooBig => (close_code::MESSAGE_TOO_BIG, "frame too big"),
            End::Idle => (close_code::POLICY_VIOLATION, "idle timeout"),
            End::Abuse => (close_code::POLICY_VIOLATION, "rate limit ignored"),
        };
        let close = self.socket.send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })));
        if tokio::time::timeout(Duration::from_secs(1), close)
            .await
            .is_err()
        {
            return; // the peer is not reading: just drop the connection
        }
        // Let the close handshake finish so the client reads the code.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
    }

    async fn write(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.write_texts([Utf8Bytes::from(frame.to_json())]).await
    }

    /// Writes the frames delivered to this session, counted in metrics.
    async fn write_frames(&mut self, frames: Vec<Arc<str>>) -> Result<(), End> {
        if frames.is_empty() {
            return Ok(());
        }
        self.server
            .metrics
            .frames_delivered
            .add(frames.len() as u64);
        self.write_texts(frames.into_iter().map(|frame| Utf8Bytes::from(&*frame)))
            .await
    }

    /// Writes the texts and flushes once: under load a session writes
    /// everything queued for it with one syscall instead of one per frame.
    /// A client that does not read blocks the write once the socket
    /// buffers are full; past `write_timeout_ms` it counts as a slow
    /// consumer and is dropped, so it never holds up its own queue forever.
    async fn write_texts<I>(&mut self, texts: I) -> Result<(), End>
    where
        I: IntoIterator<Item = Utf8Bytes>,
        I::IntoIter: Send,
    {
        let timeout = Duration::from_millis(self.server.config.write_timeout_ms.max(1));
        let socket = &mut self.socket;
        let write_all = async move {
            for text in texts {
                socket.feed(WsMessage::Text(text)).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(timeout, write_all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::WriteFailed),
            Err(_) => Err(End::SlowConsumer),
        }
    }

    /// Orders a batch of deliveries per room and writes the result in one
    /// flush.
    async fn on_deliveries(&mut self, batch: Vec<Arc<Delivery>>) -> Result<(), End> {
        let mut ready = Vec::with_capacity(batch.len());
        let now = Instant::now();
        for delivery in batch {
            match delivery.kind() {
                DeliveryKind::Ephemeral => ready.push(delivery.frame.clone()),
                DeliveryKind::Message => self.order.offer(
                    &delivery.room,
                    delivery.seq,
                    delivery.frame.clone(),
                    now,
                    &mut ready,
                ),
            }
        }
        self.write_frames(ready).await
    }

    /// Fills every due gap from history, page by page, up to the gap's end.
    /// What history lacks below that end was trimmed by retention and is
    /// skipped. A failed read backs off (per room, doubling up to 5 s). A
    /// gap known only from the store's latest seq is filled only while the
    /// user is still a member: a removed member's session forgets the room.
    async fn fill_gaps(&mut self, delay: Duration) -> Result<(), End> {
        const PAGE: u64 = 500;
        let store = self.server.store.clone();
        // Rooms first seen through a delivery start where the user joined
        // them (issue 12): what arrived first need not be the first message.
        // Without an answer they start at the lowest seq that arrived.
        let now = Instant::now();
        for room in self.order.holds_ending(now) {
            match store.joined_seq(&room, &self.user).await {
                Ok(Some(joined)) => {
                    let due = now.checked_sub(delay).unwrap_or(now);
                    self.order.joined_at(&room, joined, due);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %room, "join seq unknown; the room starts at its first delivery")
                }
            }
        }
        let mut released = Vec::new();
        self.order.release_holds(now, &mut released);
        self.write_frames(released).await?;
        for gap in self.order.due_gaps(Instant::now(), delay) {
            self.server.metrics.gap_fills.inc();
            if gap.tail {
                match store.is_member(&gap.room, &self.user).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.order.forget(&gap.room);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, room = %gap.room, "gap fill membership check failed; backing off");
                        self.order.fill_failed(&gap.room, Instant::now(), delay);
                        continue;
                    }
                }
            }
            loop {
                let after = self.order.last(&gap.room).unwrap_or(gap.after);
                let want = gap.before.saturating_sub(after + 1).min(PAGE);
                if want == 0 {
                    break;
                }
                let page = match store.messages_after(&gap.room, after, want as u32).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, room = %gap.room, "gap fill failed; backing off");
                        self.order.fill_failed(&gap.room, Instant::now(), delay);
                        break;
                    }
                };
                // Fewer than asked, or nothing below the gap's end: history
                // has no more of this gap.
                let exhausted =
                    (page.len() as u64) < want || page.first().is_none_or(|m| m.seq >= gap.before);
                let mut ready = Vec::new();
                let now = Instant::now();
                for m in page.into_iter().filter(|m| m.seq < gap.before) {
                    let seq = m.seq;
                    if seq > self.order.last(&gap.room).unwrap_or(0) + 1 {
                        // Below `seq` history has nothing: trimmed.
                        self.order.rewind(&gap.room, seq - 1);
                    }
                    let frame: Arc<str> = Arc::from(ServerFrame::Message(m).to_json());
                    self.order.offer(&gap.room, seq, frame, now, &mut ready);
                }
                let at_end = self.order.last(&gap.room).unwrap_or(0) + 1 >= gap.before;
                if exhausted || at_end {
                    self.order.skip_gap(&gap, now, &mut ready);
                }
                self.write_frames(ready).await?;
                if exhausted || at_end {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        self.server.metrics.frames_received.inc();
        let frame = match ClientFrame::parse(text, &self.server.limits) {
            Ok(frame) => frame,
            Err(e) => return self.write(&e.into_server_frame()).await,
        };
        if matches!(
            frame,
            ClientFrame::Send { .. } | ClientFrame::Typing { .. } | ClientFrame::Read { .. }
        ) {
            let now = Instant::now();
            let mut verdict = self.rate.check(now);
            let config = &self.server.config;
            if verdict == Verdict::Allow
                && !self.server.user_rates.check(
                    &self.user,
                    config.user_send_rate_per_s,
                    config.user_send_burst,
                    now,
                )
            {
                verdict = Verdict::Refuse;
            }
            match verdict {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    let client_msg_id = match &frame {
                        ClientFrame::Send { client_msg_id, .. } => client_msg_id.clone(),
                        _ => None,
                    };
                    return self
                        .write(&ServerFrame::Error {
                            code: ErrorCode::RateLimited,
                            message: "too many frames; slow down (nothing was stored)".into(),
                            client_msg_id,
                        })
                        .await;
                }
                Verdict::Abuse => return Err(End::Abuse),
            }
        }
        match frame {
            ClientFrame::Send {
                room,
                body,
                client_msg_id,
            } => self.on_send(room, body, client_msg_id).await,
            ClientFrame::Resume { rooms } => self.on_resume(rooms).await,
            ClientFrame::Typing { room } => self.on_typing(room).await,
            ClientFrame::Ping { nonce } => self.write(&ServerFrame::Pong { nonce }).await,
            ClientFrame::Read { room, seq } => self.on_read(room, seq).await,
        }
    }

    /// Moves this user's read marker; the `read` frame then reaches the
    /// user's sessions (this one included) and, in small rooms, the other
    /// members, through the router like any event.
    async fn on_read(&mut self, room: String, seq: u64) -> Result<(), End> {
        let forbidden = ServerFrame::error(ErrorCode::Forbidden, "not a member of this room");
        if !is_plausible_room_id(&room) {
            return self.write(&forbidden).await;
        }
        match self.server.store.mark_read(&room, &self.user, seq).await {
            Ok(marked) => {
                self.server
                    .router
                    .route_read(&room, &self.user, &marked)
                    .await;
                Ok(())
            }
            Err(StoreError::NoRoom(_) | StoreError::NotMember { .. }) => {
                self.write(&forbidden).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "read marker update failed");
                self.write(&ServerFrame::error(
                    ErrorCode::Unavailable,
                    "the read marker could not be stored; retry",
                ))
                .await
            }
        }
    }

    async fn on_send(
        &mut self,
        room: String,
        body: String,
        client_msg_id: Option<String>,
    ) -> Result<(), End> {
        let error = |code, message: &str, cmid: &Option<String>| ServerFrame::Error {
            code,
            message: message.to_owned(),
            client_msg_id: cmid.clone(),
        };
        if !is_plausible_room_id(&room) {
            return self
                .write(&error(
                    ErrorCode::Forbidden,
                    "not a member of this room",
                    &client_msg_id,
                ))
                .await;
        }
        let arrived = std::time::Instant::now();
        let result = self
            .server
            .store
            .append(NewMessage {
                room,
                id: new_id("m_"),
                from: self.user.clone(),
                body,
                ts: now_ms(),
                client_msg_id: client_msg_id.clone(),
                from_member: true,
            })
            .await;
        match result {
            Ok(appended) => {
                let m = &appended.message;
                self.write(&ServerFrame::Ack {
                    client_msg_id: m.client_msg_id.clone(),
                    room: m.room.clone(),
                    seq: m.seq,
                    id: m.id.clone(),
                })
                .await?;
                let metrics = &self.server.metrics;
                metrics.send_ack_latency.observe_duration(arrived.elapsed());
                if !appended.duplicate {
                    self.server.metrics.messages_stored.inc();
                }
                // Routed here, in send order, with the presence index the
                // append returned: no store read, nothing to wait for but a
                // registry refresh when a server is new. A duplicate is
                // routed again: its first append may have been stored after
                // the client's attempt timed out, never routed. Sessions
                // drop seqs they already have.
                self.server
                    .router
                    .route_message(&appended.message, &appended.online)
                    .await;
                Ok(())
            }
            Err(StoreError::NoRoom(_) | StoreError::NotMember { .. }) => {
                self.write(&error(
                    ErrorCode::Forbidden,
                    "not a member of this room",
                    &client_msg_id,
                ))
                .await
            }
            Err(e) => {
                self.server.metrics.sends_unavailable.inc();
                tracing::warn!(error = %e, "append failed");
                self.write(&error(
                    ErrorCode::Unavailable,
                    "the message could not be confirmed as durably stored; retry with the same client_msg_id",
                    &client_msg_id,
                ))
                .await
            }
        }
    }

    /// Replays every stored message after each given seq, in order, then
    /// `resumed`. Live deliveries queue meanwhile and are deduplicated by
    /// the room cursor afterwards, so nothing is lost or doubled.
    async fn on_resume(&mut self, rooms: BTreeMap<String, u64>) -> Result<(), End> {
        let store = self.server.store.clone();
        let mut resumed = BTreeMap::new();
        for (room, from) in rooms {
            let member = is_plausible_room_id(&room)
                && match store.is_member(&room, &self.user).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "resume membership check failed");
                        return self
                            .write(&ServerFrame::error(
                                ErrorCode::Unavailable,
                                "storage unavailable; resume again",
                            ))
                            .await;
                    }
                };
            if !member {
                let frame = ServerFrame::error(
                    ErrorCode::Forbidden,
                    format!("not a member of room {room}"),
                );
                self.write(&frame).await?;
                continue;
            }
            let latest = match store.latest_seqs(&[&room]).await {
                Ok(seqs) => seqs.first().copied().unwrap_or(0),
                Err(_) => {
                    return self
                        .write(&ServerFrame::error(
                            ErrorCode::Unavailable,
                            "storage unavailable; resume again",
                        ))
                        .await
                }
            };
            self.order.rewind(&room, from.min(latest));
            loop {
                let after = self.order.last(&room).unwrap_or(0);
                let page = match store.messages_after(&room, after, 200).await {
                    Ok(page) => page,
                    Err(_) => {
                        return self
                            .write(&ServerFrame::error(
                                ErrorCode::Unavailable,
                                "storage unavailable; resume again",
                            ))
                            .await
                    }
                };
                if page.is_empty() {
                    break;
                }
                let mut ready = Vec::new();
                for m in page {
                    let seq = m.seq;
                    if seq != self.order.last(&room).unwrap_or(0) + 1 {
                        // Trimmed by retention: skip ahead to what exists.
                        self.order.rewind(&room, seq - 1);
                    }
                    let frame: Arc<str> = Arc::from(ServerFrame::Message(m).to_json());
                    self.order
                        .offer(&room, seq, frame, Instant::now(), &mut ready);
                }
                self.write_frames(ready).await?;
            }
            resumed.insert(room.clone(), self.order.last(&room).unwrap_or(0));
        }
        self.write(&ServerFrame::Resumed { rooms: resumed }).await
    }

    async fn on_typing(&mut self, room: String) -> Result<(), End> {
        let member = is_plausible_room_id(&room)
            && self
                .server
                .store
                .is_member(&room, &self.user)
                .await
                .unwrap_or(false);
        if !member {
            return self
                .write(&ServerFrame::error(
                    ErrorCode::Forbidden,
                    "not a member of this room",
                ))
                .await;
        }
        let router = self.server.router.clone();
        let user = self.user.clone();
        tokio::spawn(async move {
            let _ = router.route_typing(&room, &user).await;
        });
        Ok(())
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("too long")
        || text.contains("too big")
        || text.contains("capacity")
        || text.contains("size")
}

/// A timer only while one is due: a tokio `Sleep` inline would be part of
/// every idle session's task, and most sessions have no gap to fill.
fn sleep_until(at: Option<Instant>) -> impl std::future::Future<Output = ()> {
    let sleep = at.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
    async move {
        match sleep {
            Some(sleep) => sleep.await,
            None => std::future::pending().await,
        }
    }
}

//! [`SessionHub`]: the sessions on this chat server, by user.
//!
//! Delivery never blocks: each session has a bounded [`Mailbox`] and the
//! hub only offers to it. A session whose queue is full is a slow consumer;
//! it is told to end instead of slowing everyone else down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use chat_routing::{Delivery, LocalDelivery};

use crate::mailbox::{Ending, Mailbox};
use crate::order::{LatestSeqs, TrackedRooms};

#[derive(Clone)]
pub struct SessionHandle {
    pub session: String,
    pub mailbox: Arc<Mailbox>,
}

#[derive(Default)]
pub struct SessionHub {
    /// From a message's storing to its hand-over here (when set).
    delivery_latency: Option<Arc<chat_ops::Histogram>>,
    users: RwLock<HashMap<String, Vec<SessionHandle>>>,
    count: AtomicUsize,
    overflows: AtomicUsize,
    /// Set by [`SessionHub::drain_all`]: sessions added later are told at
    /// once.
    draining: AtomicBool,
    /// Rooms the local sessions track: what the server's catch-up asks the
    /// store about. Sessions' cursors count themselves in and out.
    rooms: Arc<TrackedRooms>,
}

impl SessionHub {
    /// A hub that records each message's delivery latency in `histogram`.
    pub fn with_delivery_latency(histogram: Arc<chat_ops::Histogram>) -> Self {
        SessionHub {
            delivery_latency: Some(histogram),
            ..SessionHub::default()
        }
    }

    pub fn add(&self, user: &str, handle: SessionHandle) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        // Read under the lock `drain_all` takes after setting it: a session
        // is either told here or found there.
        if self.draining.load(Ordering::SeqCst) {
            handle.mailbox.end(Ending::Drain);
        }
        // Most users have one session: a first push would reserve four.
        let sessions = users.entry(user.to_owned()).or_default();
        sessions.reserve_exact(1);
        sessions.push(handle);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells every session, now and added from now on, to end because the
    /// server drains.
    pub fn drain_all(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.for_each_mailbox(|mailbox| mailbox.end(Ending::Drain));
    }

    /// Hands every session the server's latest catch-up map.
    pub fn catch_up_all(&self, latest: &Arc<LatestSeqs>) {
        self.for_each_mailbox(|mailbox| mailbox.catch_up(latest.clone()));
    }

    /// Tells the sessions of one ping group to ping their clients (one
    /// server-wide timer instead of one per session).
    pub fn ping_group(&self, group: u8) {
        self.for_each_mailbox(|mailbox| {
            if mailbox.ping_group() == group {
                mailbox.ping_due();
            }
        });
    }

    fn for_each_mailbox(&self, f: impl Fn(&Mailbox)) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        for handle in users.values().flatten() {
            f(&handle.mailbox);
        }
    }

    pub fn remove(&self, user: &str, session: &str) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = users.get_mut(user) {
            let before = list.len();
            list.retain(|h| h.session != session);
            if list.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(user)
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Sessions disconnected because their queue was full.
    pub fn overflows(&self) -> usize {
        self.overflows.load(Ordering::Relaxed)
    }

    /// Every (user, session) on this server.
    pub fn sessions(&self) -> Vec<(String, String)> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|(user, handles)| handles.iter().map(|h| (user.clone(), h.session.clone())))
            .collect()
    }

    /// What every session's [`crate::order::RoomOrder`] counts its rooms in.
    pub fn tracked_rooms(&self) -> Arc<TrackedRooms> {
        self.rooms.clone()
    }

    pub fn users(&self) -> Vec<String> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

impl LocalDelivery for SessionHub {
    fn deliver(&self, delivery: Arc<Delivery>) {
        if let Some(histogram) = self
            .delivery_latency
            .as_ref()
            .filter(|_| delivery.ts_ms > 0)
        {
            let ms = chat_protocol::now_ms().saturating_sub(delivery.ts_ms);
            histogram.observe(ms as f64 / 1000.0);
        }
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        for user in &delivery.users {
            for handle in users.get(user).into_iter().flatten() {
                if !handle.mailbox.deliver(delivery.clone()) {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over one round of the ping groups every session is told to ping
    /// exactly once, in its own group's turn.
    #[tokio::test]
    async fn each_session_is_pinged_once_per_round_of_groups() {
        use crate::mailbox::{Mail, PING_GROUPS};
        let hub = SessionHub::default();
        let mailboxes: Vec<Arc<Mailbox>> = (0..50)
            .map(|i| {
                let mailbox = Arc::new(Mailbox::new(4));
                let handle = SessionHandle {
                    session: format!("s_{i}"),
                    mailbox: mailbox.clone(),
                };
                hub.add(&format!("u{}", i % 7), handle);
                mailbox
            })
            .collect();
        for group in 0..PING_GROUPS {
            hub.ping_group(group);
            for mailbox in &mailboxes {
                let due = mailbox.ping_group() == group;
                let got = tokio::time::timeout(std::time::Duration::ZERO, mailbox.recv(1)).await;
                assert_eq!(matches!(got, Ok(Mail::PingDue)), due, "group {group}");
            }
        }
    }

    /// A session added once the drain began is told at once, as are those
    /// there before.
    #[tokio::test]
    async fn sessions_added_during_a_drain_are_told_to_end() {
        let hub = SessionHub::default();
        let handle = |session: &str| SessionHandle {
            session: session.into(),
            mailbox: Arc::new(Mailbox::new(4)),
        };
        let before = handle("s_before");
        hub.add("alice", before.clone());
        hub.drain_all();
        let after = handle("s_after");
        hub.add("bob", after.clone());
        for h in [before, after] {
            let ending = tokio::time::timeout(std::time::Duration::ZERO, h.mailbox.ending()).await;
            assert_eq!(ending.ok(), Some(Ending::Drain), "{}", h.session);
        }
    }
}

//! [`Mailbox`]: what other tasks hand to one session (deliveries, the
//! server's catch-up map, a due ping, an order to end) in one small
//! allocation that holds nothing while it is empty.
//!
//! It replaced a tokio `mpsc` queue, a `Notify` for kicks, and the
//! session's own subscriptions to the drain and catch-up `watch`es plus a
//! ping timer. An idle session pays for all of those for its whole life:
//! the `mpsc` channel alone allocated 800 bytes up front (a cache-padded
//! channel and its first 32-slot block), and the waits sat inline in every
//! session's task (docs/benchmarks.md, "Idle session memory"). Every
//! sender here is a server task that never waits: a full queue is a slow
//! consumer and ends the session instead.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use chat_routing::Delivery;

use crate::order::LatestSeqs;

/// Why the server ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server is draining: the client is told to reconnect elsewhere.
    Drain,
    /// The session's queue overflowed.
    SlowConsumer,
}

/// What a session takes out of its mailbox, besides an [`Ending`].
#[derive(Debug)]
pub enum Mail {
    /// Deliveries in the order they were handed over (at most the batch
    /// asked for).
    Deliveries(Vec<Arc<Delivery>>),
    /// The latest seq of every room the server's sessions follow.
    CatchUp(Arc<LatestSeqs>),
    /// Time to ping the client and check that it is still there.
    PingDue,
}

/// A queue has room for `capacity` deliveries; memory is taken as they
/// arrive and given back once a burst is over.
pub struct Mailbox {
    capacity: usize,
    /// Which of the server's [`PING_GROUPS`] this session is pinged with.
    ping_group: u8,
    state: Mutex<State>,
}

/// Sessions are pinged in this many groups, one after the other over each
/// ping interval, so that a server with many sessions does not write all
/// its pings (and take all the pongs) at one instant.
pub const PING_GROUPS: u8 = 16;

#[derive(Default)]
struct State {
    deliveries: VecDeque<Arc<Delivery>>,
    catch_up: Option<Arc<LatestSeqs>>,
    ping_due: bool,
    ending: Option<Ending>,
    /// The session task, when it waits for mail. One task reads a mailbox,
    /// so one waker is enough.
    waker: Option<Waker>,
}

/// Past this many slots an emptied queue gives its memory back: idle
/// sessions after a burst should cost what idle sessions before it do.
const KEPT_CAPACITY: usize = 8;

impl Mailbox {
    pub fn new(capacity: usize) -> Mailbox {
        Mailbox {
            capacity: capacity.max(1),
            ping_group: rand::random_range(0..PING_GROUPS),
            state: Mutex::default(),
        }
    }

    pub fn ping_group(&self) -> u8 {
        self.ping_group
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a delivery; `false` when the queue is full (the session is
    /// then told to end as a slow consumer).
    pub fn deliver(&self, delivery: Arc<Delivery>) -> bool {
        let mut state = self.lock();
        if state.deliveries.len() >= self.capacity {
            state.ending.get_or_insert(Ending::SlowConsumer);
            wake(state);
            return false;
        }
        state.deliveries.push_back(delivery);
        wake(state);
        true
    }

    /// Hands over the server's latest catch-up map (replacing one not yet
    /// taken: only the newest matters).
    pub fn catch_up(&self, latest: Arc<LatestSeqs>) {
        let mut state = self.lock();
        state.catch_up = Some(latest);
        wake(state);
    }

    pub fn ping_due(&self) {
        let mut state = self.lock();
        state.ping_due = true;
        wake(state);
    }

    /// Tells the session to end; the first reason given stands.
    pub fn end(&self, ending: Ending) {
        let mut state = self.lock();
        state.ending.get_or_insert(ending);
        wake(state);
    }

    /// Waits until the session is told to end.
    pub async fn ending(&self) -> Ending {
        poll_fn(|cx| {
            let mut state = self.lock();
            match state.ending {
                Some(ending) => Poll::Ready(ending),
                None => pending(&mut state, cx),
            }
        })
        .await
    }

    /// Waits for mail: a due ping first (one small frame per interval, and
    /// a session that is never without deliveries must still ping, or its
    /// client, unable to answer, would count as idle), then deliveries (up
    /// to `max_batch` at once), then a catch-up map.
    pub async fn recv(&self, max_batch: usize) -> Mail {
        poll_fn(|cx| {
            let mut state = self.lock();
            if std::mem::take(&mut state.ping_due) {
                return Poll::Ready(Mail::PingDue);
            }
            if !state.deliveries.is_empty() {
                let n = state.deliveries.len().min(max_batch.max(1));
                let batch: Vec<_> = state.deliveries.drain(..n).collect();
                if state.deliveries.is_empty() && state.deliveries.capacity() > KEPT_CAPACITY {
                    state.deliveries = VecDeque::new();
                }
                return Poll::Ready(Mail::Deliveries(batch));
            }
            if let Some(latest) = state.catch_up.take() {
                return Poll::Ready(Mail::CatchUp(latest));
            }
            pending(&mut state, cx)
        })
        .await
    }
}

fn pending<T>(state: &mut State, cx: &mut Context<'_>) -> Poll<T> {
    match &state.waker {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => state.waker = Some(cx.waker().clone()),
    }
    Poll::Pending
}

/// Wakes the waiting session, outside the lock.
fn wake(mut state: MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            room: "r_1".into(),
            seq,
            users: vec!["alice".into()],
            frame: Arc::from(format!("{{\"seq\":{seq}}}")),
            ts_ms: 0,
        })
    }

    fn seqs(mail: Mail) -> Vec<u64> {
        match mail {
            Mail::Deliveries(batch) => batch.iter().map(|d| d.seq).collect(),
            other => panic!("expected deliveries, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_due_ping_then_deliveries_in_order_in_batches_then_catch_up() {
        let mailbox = Mailbox::new(16);
        mailbox.catch_up(Arc::default());
        for seq in 1..=5 {
            assert!(mailbox.deliver(delivery(seq)));
        }
        mailbox.ping_due();
        assert!(matches!(mailbox.recv(3).await, Mail::PingDue));
        assert_eq!(seqs(mailbox.recv(3).await), [1, 2, 3]);
        assert_eq!(seqs(mailbox.recv(3).await), [4, 5]);
        assert!(matches!(mailbox.recv(3).await, Mail::CatchUp(_)));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_ends_the_session_as_a_slow_consumer() {
        let mailbox = Mailbox::new(2);
        assert!(mailbox.deliver(delivery(1)));
        assert!(mailbox.deliver(delivery(2)));
        assert!(!mailbox.deliver(delivery(3)));
        mailbox.end(Ending::Drain); // the first reason stands
        assert_eq!(mailbox.ending().await, Ending::SlowConsumer);
        assert_eq!(seqs(mailbox.recv(10).await), [1, 2]);
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_mail_from_another_task() {
        let mailbox = Arc::new(Mailbox::new(4));
        let sender = mailbox.clone();
        let waiting = tokio::spawn(async move { seqs(mailbox.recv(10).await) });
        tokio::task::yield_now().await;
        tokio::spawn(async move { sender.deliver(delivery(7)) });
        assert_eq!(waiting.await.unwrap(), [7]);
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_its_memory_back_after_a_burst() {
        let mailbox = Mailbox::new(1000);
        for seq in 1..=100 {
            mailbox.deliver(delivery(seq));
        }
        assert_eq!(seqs(mailbox.recv(1000).await).len(), 100);
        assert_eq!(mailbox.lock().deliveries.capacity(), 0);
    }
}

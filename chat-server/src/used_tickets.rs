//! Single use of tickets, enforced in this process's memory.
//!
//! A ticket names one chat server, so that server alone can tell whether it
//! was used: no store round trip is needed, on the API server (the pending
//! entry) or here (taking it). That was a fifth to a quarter of a
//! connect's CPU over all processes (docs/benchmarks.md, "Tickets checked
//! in memory": 112 of 558 µs per session in the experiment, 150 of 574 in
//! the A/B).
//!
//! The memory starts empty when the process starts, so a ticket issued
//! before then could have been used by the previous process with this id:
//! it is refused, and the client asks `/v1/connect` for a new one. Clock
//! skew between the API server that issued it and this server shifts that
//! boundary by the skew.

use std::collections::HashMap;
use std::sync::Mutex;

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Presented before, to this process.
    AlreadyUsed,
    /// Issued before this process started.
    IssuedBeforeStart,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::AlreadyUsed => "ticket already used",
            Refused::IssuedBeforeStart => {
                "ticket issued before this chat server restarted; call /v1/connect again"
            }
        }
    }
}

/// The ids of tickets used since the process started, until they expire.
pub struct UsedTickets {
    started_at_ms: u64,
    state: Mutex<State>,
}

struct State {
    /// Ticket id to its expiry (ms): after that, the signature check
    /// refuses it anyway, so it is forgotten.
    used: HashMap<String, u64>,
    /// When expired ids are next swept out.
    next_sweep_ms: u64,
}

/// Expired ids are swept at most this often: a sweep walks every id.
const SWEEP_EVERY_MS: u64 = 1_000;

impl UsedTickets {
    pub fn new(started_at_ms: u64) -> Self {
        UsedTickets {
            started_at_ms,
            state: Mutex::new(State {
                used: HashMap::new(),
                next_sweep_ms: started_at_ms + SWEEP_EVERY_MS,
            }),
        }
    }

    /// Records the ticket as used, or says why it may not be used. The
    /// caller has checked its signature, expiry and server.
    pub fn claim(
        &self,
        id: &str,
        issued_at_ms: u64,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refused> {
        if issued_at_ms < self.started_at_ms {
            return Err(Refused::IssuedBeforeStart);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms >= state.next_sweep_ms {
            state.used.retain(|_, expires| *expires > now_ms);
            state.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        }
        if state.used.contains_key(id) {
            return Err(Refused::AlreadyUsed);
        }
        state.used.insert(id.to_owned(), expires_at_ms);
        Ok(())
    }

    /// Ids remembered now (expired ones until the next sweep).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .used
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_used_once() {
        let used = UsedTickets::new(1_000);
        assert_eq!(used.claim("t1", 1_000, 9_000, 1_100), Ok(()));
        assert_eq!(
            used.claim("t1", 1_000, 9_000, 1_200),
            Err(Refused::AlreadyUsed)
        );
        assert_eq!(used.claim("t2", 1_100, 9_000, 1_200), Ok(()));
    }

    #[test]
    fn a_ticket_issued_before_the_process_started_is_refused() {
        let used = UsedTickets::new(1_000);
        assert_eq!(
            used.claim("t1", 999, 9_000, 1_100),
            Err(Refused::IssuedBeforeStart)
        );
        // Not recorded: the refusal is for its age, not its use.
        assert_eq!(used.len(), 0);
    }

    #[test]
    fn expired_ids_are_forgotten() {
        let used = UsedTickets::new(0);
        used.claim("short", 0, 500, 10).unwrap();
        used.claim("long", 0, 60_000, 10).unwrap();
        // The first claim after the sweep interval sweeps.
        used.claim("later", 1_500, 60_000, 1_500).unwrap();
        assert_eq!(used.len(), 2);
        assert_eq!(
            used.claim("long", 0, 60_000, 1_600),
            Err(Refused::AlreadyUsed)
        );
    }
}

//! [`PlacementPolicy`]: which chat server a new client should use.
//!
//! Only ready servers with room left qualify. Among them the one with the
//! fewest connections plus tickets handed out but not yet used wins, so a
//! burst of connects alternates between servers instead of piling onto the
//! one that looked emptiest at the last health report. The reported load
//! figure breaks ties, then the id (deterministic for tests).

use chat_protocol::rest::ServerState;
use chat_store::ServerSnapshot;

#[derive(Debug, Clone)]
pub struct PlacementPolicy {
    /// Servers at or above this load figure (0..=1) get no new clients.
    pub max_load: f64,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy { max_load: 1.0 }
    }
}

impl PlacementPolicy {
    pub fn choose<'a>(&self, servers: &'a [ServerSnapshot]) -> Option<&'a ServerSnapshot> {
        servers
            .iter()
            .filter(|s| s.health.state == ServerState::Ready && s.health.load < self.max_load)
            .min_by(|a, b| {
                let score = |s: &ServerSnapshot| s.health.connections + s.pending_tickets;
                score(a)
                    .cmp(&score(b))
                    .then(a.health.load.total_cmp(&b.health.load))
                    .then(a.health.id.cmp(&b.health.id))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_store::ServerHealth;

    fn server(
        id: &str,
        connections: u64,
        pending: u64,
        state: ServerState,
        load: f64,
    ) -> ServerSnapshot {
        ServerSnapshot {
            health: ServerHealth {
                id: id.into(),
                url: String::new(),
                internal_url: String::new(),
                state,
                connections,
                load,
                last_seen_ms: 0,
                tickets_in_own_slot: true,
                tracks_used_tickets: true,
            },
            pending_tickets: pending,
        }
    }

    #[test]
    fn picks_the_fewest_connections_plus_pending_tickets() {
        let servers = [
            server("a", 10, 0, ServerState::Ready, 0.1),
            server("b", 4, 7, ServerState::Ready, 0.1),
            server("c", 6, 2, ServerState::Ready, 0.1),
        ];
        assert_eq!(
            PlacementPolicy::default()
                .choose(&servers)
                .unwrap()
                .health
                .id,
            "c"
        );
    }

    #[test]
    fn never_picks_draining_or_full_servers() {
        let servers = [
            server("a", 0, 0, ServerState::Draining, 0.0),
            server("b", 0, 0, ServerState::Ready, 1.0),
            server("c", 50, 0, ServerState::Ready, 0.5),
        ];
        assert_eq!(
            PlacementPolicy::default()
                .choose(&servers)
                .unwrap()
                .health
                .id,
            "c"
        );
        assert!(PlacementPolicy::default().choose(&servers[..2]).is_none());
        assert!(PlacementPolicy::default().choose(&[]).is_none());
    }

    #[test]
    fn ties_break_on_load_then_id() {
        let servers = [
            server("b", 1, 0, ServerState::Ready, 0.2),
            server("a", 1, 0, ServerState::Ready, 0.3),
            server("c", 1, 0, ServerState::Ready, 0.2),
        ];
        assert_eq!(
            PlacementPolicy::default()
                .choose(&servers)
                .unwrap()
                .health
                .id,
            "b"
        );
    }

    #[test]
    fn a_burst_alternates_when_pending_tickets_are_counted() {
        let mut servers = vec![
            server("a", 0, 0, ServerState::Ready, 0.0),
            server("b", 0, 0, ServerState::Ready, 0.0),
        ];
        let mut counts = [0, 0];
        for _ in 0..100 {
            let i = servers
                .iter()
                .position(|s| {
                    s.health.id
                        == PlacementPolicy::default()
                            .choose(&servers)
                            .unwrap()
                            .health
                            .id
                })
                .unwrap();
            servers[i].pending_tickets += 1;
            counts[i] += 1;
        }
        assert_eq!(counts, [50, 50]);
    }
}

//! Property: whatever order (and however many times) a room's messages
//! reach a session, with gap fills from history in between, the client sees
//! each seq exactly once, in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_server::order::RoomOrder;
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_arrival_order_is_written_once_in_order(
        n in 1u64..60,
        seed in any::<u64>(),
        duplicates in prop::collection::vec(1u64..60, 0..20),
        fill_every in 1usize..8,
    ) {
        // A deterministic shuffle of 1..=n plus some duplicates.
        let mut arrivals: Vec<u64> = (1..=n).chain(duplicates.into_iter().filter(|d| *d <= n)).collect();
        let mut state = seed | 1;
        for i in (1..arrivals.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            arrivals.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut order = RoomOrder::default();
        order.set_baseline("r", 0);
        let delay = Duration::from_millis(10);
        let mut now = Instant::now();
        let mut written: Vec<u64> = Vec::new();
        let mut out = Vec::new();
        for (i, seq) in arrivals.iter().enumerate() {
            order.offer("r", *seq, Arc::from(seq.to_string()), now, &mut out);
            if i % fill_every == 0 {
                // Time passes; due gaps are filled from "history" (which has
                // every message, since messages are stored before routing).
                now += delay;
                for gap in order.due_gaps(now, delay) {
                    for s in gap.after + 1..gap.before {
                        order.offer("r", s, Arc::from(s.to_string()), now, &mut out);
                    }
                    order.skip_gap(&gap, now, &mut out);
                }
            }
            written.extend(out.drain(..).map(|f| f.parse::<u64>().unwrap()));
        }
        prop_assert_eq!(written, (1..=n).collect::<Vec<_>>());
    }
}

//! How many chat servers a room's online members end up on, placed by load
//! alone and with rooms kept together (`PlacementPolicy`'s defaults), for
//! the capacity model (docs/capacity.md): each server holding members of a
//! room follows it (the catch-up's poll every second) and is a hop for each
//! of its messages.
//!
//! ```text
//! cargo run --release -p api-server --example placement_spread -- \
//!     USERS PODS ROOM_SIZE ROOMS_PER_USER MODEL [SEED]
//! ```
//!
//! MODEL is how rooms are made:
//! - `groups`: users in disjoint groups of ROOM_SIZE sharing ROOMS_PER_USER
//!   rooms (as `chat-bench` makes them);
//! - `random`: each room's members drawn from all users;
//! - `teams:T`: users in teams of T, each room's members drawn from one
//!   team.
//!
//! Users connect one at a time in a random order, each seeing the sessions
//! before it (as the store's presence indexes show them) and the servers'
//! connections; then the first server is lost and its users connect again.
//! The real policy decides; only the arrival is modelled.

use std::collections::HashMap;

use api_server::placement::PlacementPolicy;
use chat_protocol::rest::ServerState;
use chat_store::{ServerHealth, ServerSnapshot};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: placement_spread USERS PODS ROOM_SIZE ROOMS_PER_USER groups|random|teams:T [SEED]");
        std::process::exit(2);
    }
    let number = |i: usize| -> usize { args[i].parse().expect("a number") };
    let (users, pods, room_size, rooms_per_user) = (number(0), number(1), number(2), number(3));
    let seed = args.get(5).map_or(1, |s| s.parse().expect("a seed"));
    let mut rng = StdRng::seed_from_u64(seed);
    let rooms = make_rooms(&args[4], users, room_size, rooms_per_user, &mut rng);
    let mut rooms_of_user = vec![Vec::new(); users];
    for (room, members) in rooms.iter().enumerate() {
        for user in members {
            rooms_of_user[*user].push(room);
        }
    }
    let in_rooms = rooms_of_user.iter().filter(|r| !r.is_empty()).count();
    println!(
        "{users} users ({in_rooms} in rooms), {} rooms of {room_size} ({}), {pods} pods",
        rooms.len(),
        args[4]
    );
    let by_load = PlacementPolicy {
        room_affinity_connections: 0,
        room_affinity_slack: 0.0,
        ..PlacementPolicy::default()
    };
    for (name, policy) in [
        ("load alone", by_load),
        ("rooms kept together", PlacementPolicy::default()),
    ] {
        let mut order: Vec<usize> = (0..users).collect();
        order.shuffle(&mut rng);
        let mut world = World::new(pods, rooms.len());
        for user in &order {
            world.place(&policy, *user, &rooms_of_user[*user]);
        }
        println!("{name}: {}", world.report());
        // The first pod is lost: its users connect again elsewhere.
        let lost: Vec<usize> = order
            .iter()
            .copied()
            .filter(|u| world.pod_of[*u] == Some(0))
            .collect();
        for user in &lost {
            world.leave(*user, &rooms_of_user[*user]);
        }
        world.servers[0].health.state = ServerState::Draining;
        for user in &lost {
            world.place(&policy, *user, &rooms_of_user[*user]);
        }
        println!(
            "{name}, after pod 0 was lost ({} users placed again): {}",
            lost.len(),
            world.report()
        );
    }
}

fn make_rooms(
    model: &str,
    users: usize,
    room_size: usize,
    rooms_per_user: usize,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let all: Vec<usize> = (0..users).collect();
    let count = users * rooms_per_user / room_size.max(1);
    match model.split_once(':') {
        None if model == "groups" => all
            .chunks(room_size)
            .flat_map(|group| std::iter::repeat_n(group.to_vec(), rooms_per_user))
            .collect(),
        None if model == "random" => (0..count)
            .map(|_| all.choose_multiple(rng, room_size).copied().collect())
            .collect(),
        Some(("teams", size)) => {
            let teams: Vec<&[usize]> = all.chunks(size.parse().expect("a team size")).collect();
            (0..count)
                .map(|_| {
                    let team = teams.choose(rng).expect("a team");
                    team.choose_multiple(rng, room_size).copied().collect()
                })
                .collect()
        }
        _ => panic!("unknown model {model}: groups, random or teams:T"),
    }
}

struct World {
    servers: Vec<ServerSnapshot>,
    /// Per room, the pods holding its online members, with how many.
    room_pods: Vec<HashMap<usize, u32>>,
    pod_of: Vec<Option<usize>>,
}

impl World {
    fn new(pods: usize, rooms: usize) -> World {
        let servers = (0..pods)
            .map(|i| ServerSnapshot {
                health: ServerHealth {
                    id: i.to_string(),
                    url: String::new(),
                    internal_url: String::new(),
                    state: ServerState::Ready,
                    connections: 0,
                    load: 0.0,
                    last_seen_ms: 0,
                    tickets_in_own_slot: true,
                    tracks_used_tickets: true,
                },
                pending_tickets: 0,
            })
            .collect();
        World {
            servers,
            room_pods: vec![HashMap::new(); rooms],
            pod_of: Vec::new(),
        }
    }

    fn place(&mut self, policy: &PlacementPolicy, user: usize, rooms: &[usize]) {
        let rooms_on = |id: &str| {
            let pod: usize = id.parse().expect("a pod number");
            rooms
                .iter()
                .filter(|r| self.room_pods[**r].contains_key(&pod))
                .count()
        };
        // Without an allowance the API server reads no rooms (ties of
        // load would otherwise go by rooms).
        let chosen = if policy.uses_rooms() {
            policy.choose_beside_rooms(&self.servers, rooms_on)
        } else {
            policy.choose(&self.servers)
        };
        let chosen = chosen.expect("a ready pod");
        let pod: usize = chosen.health.id.parse().expect("a pod number");
        self.servers[pod].health.connections += 1;
        for room in rooms {
            *self.room_pods[*room].entry(pod).or_default() += 1;
        }
        if self.pod_of.len() <= user {
            self.pod_of.resize(user + 1, None);
        }
        self.pod_of[user] = Some(pod);
    }

    fn leave(&mut self, user: usize, rooms: &[usize]) {
        let Some(pod) = self.pod_of[user].take() else {
            return;
        };
        self.servers[pod].health.connections -= 1;
        for room in rooms {
            let pods = &mut self.room_pods[*room];
            if let Some(n) = pods.get_mut(&pod) {
                *n -= 1;
                if *n == 0 {
                    pods.remove(&pod);
                }
            }
        }
    }

    fn report(&self) -> String {
        let spread: Vec<usize> = self
            .room_pods
            .iter()
            .map(HashMap::len)
            .filter(|n| *n > 0)
            .collect();
        let follows: usize = spread.iter().sum();
        let ready: Vec<u64> = self
            .servers
            .iter()
            .filter(|s| s.health.state == ServerState::Ready)
            .map(|s| s.health.connections)
            .collect();
        format!(
            "{:.2} pods per room ({follows} room-follows), connections per pod {}-{}",
            follows as f64 / spread.len().max(1) as f64,
            ready.iter().min().unwrap_or(&0),
            ready.iter().max().unwrap_or(&0),
        )
    }
}

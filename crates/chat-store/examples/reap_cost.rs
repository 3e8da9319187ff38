//! What reaping one dead chat server costs Redis, by the number of
//! processes reaping it at once (every API and chat server runs a reaper).
//!
//! ```text
//! scripts/redis-cluster.sh start
//! cargo run --release -p chat-store --example reap_cost -- \
//!     $(scripts/redis-cluster.sh urls) <users> <rooms per user> <reapers,...> [runs]
//! ```
//!
//! Per run and reaper count: a dead server hosting `users` users (one
//! session each), in rooms of 10 (`rooms per user` each); that many
//! reapers (each its own `RedisStore`, its own connections, as separate
//! processes would be) reap it at once, as reapers that found its health
//! record expired do (`reap_silent_server` with no record left). Prints the wall time until the
//! last one is done, the Redis CPU it took (all nodes' `used_cpu_sys` +
//! `used_cpu_user` from `INFO cpu`, before and after), and how many users
//! each reaper took. The setup's CPU is not counted.

use std::time::Instant;

use chat_protocol::ids::new_id;
use chat_store::{conformance, RedisStore, SessionLocation, Store, StoreConfig};
use rand::seq::SliceRandom;

const ROOM_SIZE: usize = 10;

/// Redis CPU seconds used so far, over every node.
async fn redis_cpu_s(urls: &[String]) -> f64 {
    let mut total = 0.0;
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("node url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("node");
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .expect("INFO cpu");
        for line in info.lines() {
            if let Some((name, value)) = line.trim().split_once(':') {
                if name == "used_cpu_sys" || name == "used_cpu_user" {
                    total += value.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    total
}

/// A dead server hosting `users` users in rooms; returns its id.
async fn dead_server(store: &RedisStore, users: usize, rooms_per_user: usize) -> String {
    let prefix = new_id("u-");
    let mut ids: Vec<String> = (0..users).map(|i| format!("{prefix}-{i}")).collect();
    for _ in 0..rooms_per_user {
        ids.shuffle(&mut rand::rng());
        for members in ids.chunks(ROOM_SIZE) {
            let others: Vec<&str> = members[1..].iter().map(String::as_str).collect();
            conformance::room_with(store, &members[0], &others).await;
        }
    }
    let server = new_id("srv-dead-");
    store
        .put_server(&conformance::health(&server, 0), 60_000)
        .await
        .expect("put_server");
    let at = SessionLocation {
        session: "s".into(),
        server_id: server.clone(),
    };
    for step in ids.chunks(200) {
        futures_util::future::try_join_all(step.iter().map(|u| store.add_session(u, &at, 600_000)))
            .await
            .expect("add_session");
    }
    store.remove_server(&server).await.expect("remove_server");
    server
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [urls, users, rooms_per_user, reapers, rest @ ..] = args.as_slice() else {
        eprintln!("usage: reap_cost <urls,...> <users> <rooms per user> <reapers,...> [runs]");
        std::process::exit(2);
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let users: usize = users.parse().expect("users");
    let rooms_per_user: usize = rooms_per_user.parse().expect("rooms per user");
    let reapers: Vec<usize> = reapers
        .split(',')
        .map(|n| n.parse().expect("reapers"))
        .collect();
    let runs: usize = rest.first().map_or(1, |n| n.parse().expect("runs"));
    let setup = RedisStore::connect(&urls, StoreConfig::default())
        .await
        .expect("connect");
    for run in 1..=runs {
        for &count in &reapers {
            let server = dead_server(&setup, users, rooms_per_user).await;
            let mut stores = Vec::new();
            for _ in 0..count {
                stores.push(
                    RedisStore::connect(&urls, StoreConfig::default())
                        .await
                        .expect("connect"),
                );
            }
            let cpu_before = redis_cpu_s(&urls).await;
            let started = Instant::now();
            let taken = futures_util::future::join_all(stores.iter().map(|store| async {
                store
                    .reap_silent_server(&server, 0, 1000)
                    .await
                    .expect("reap")
                    .len()
            }))
            .await;
            let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
            let cpu_ms = (redis_cpu_s(&urls).await - cpu_before) * 1000.0;
            println!(
                "RESULT {}",
                serde_json::json!({
                    "run": run,
                    "users": users,
                    "rooms_per_user": rooms_per_user,
                    "reapers": count,
                    "wall_ms": (wall_ms * 10.0).round() / 10.0,
                    "redis_cpu_ms": (cpu_ms * 10.0).round() / 10.0,
                    "redis_cpu_us_per_user": (cpu_ms * 1000.0 / users as f64 * 10.0).round() / 10.0,
                    "taken": taken,
                })
            );
        }
    }
}

//! The Redis store against a Redis Cluster that requires TLS and AUTH, as
//! managed services do (issue 14): three `redis-server` nodes on loopback
//! with TLS only (client and cluster bus), an ACL user with a password,
//! certificates signed by a CA generated here with `openssl`. The store
//! connects with `rediss://` URLs, the CA and the ACL user; without the CA,
//! or with a wrong password, it stays unavailable (and says so) rather than
//! falling back to anything.
//!
//! Skipped (with a notice) without `redis-server`, `redis-cli` and
//! `openssl`, unless `CHAT_TEST_REQUIRE_REDIS=1`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_store::{NewMessage, NewRoom, RedisAccess, RedisStore, Store, StoreConfig};

const USER: &str = "chat";
const PASSWORD: &str = "tls-test-password";

/// Three TLS-only cluster nodes, killed when dropped.
struct TlsCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Child>,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, and a server certificate it signs for 127.0.0.1.
fn make_certificates(dir: &Path) {
    let p = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt"))
        .args(["-days", "2", "-subj", "/CN=chat test CA"]));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("node.key"))
        .arg("-out")
        .arg(p("node.csr"))
        .args(["-subj", "/CN=127.0.0.1"]));
    std::fs::write(p("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(p("node.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .args(["-CAcreateserial", "-days", "2", "-out"])
        .arg(p("node.crt"))
        .arg("-extfile")
        .arg(p("ext")));
}

/// A free port whose cluster-bus port (+10000) is free too.
fn free_node_port(taken: &[u16]) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000
            && !taken.contains(&port)
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
}

fn cli(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert"])
        .arg(dir.join("ca.crt"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", USER, "--pass", PASSWORD, "--no-auth-warning"]);
    cmd
}

fn start_cluster() -> Option<TlsCluster> {
    if !(have("redis-server") && have("redis-cli") && have("openssl")) {
        assert!(
            std::env::var("CHAT_TEST_REQUIRE_REDIS").as_deref() != Ok("1"),
            "redis-server, redis-cli and openssl are required (CHAT_TEST_REQUIRE_REDIS=1)"
        );
        println!("[redis-tls] skipped: needs redis-server, redis-cli and openssl");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("chat-redis-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let mut cluster = TlsCluster {
        dir: dir.clone(),
        ports: Vec::new(),
        nodes: Vec::new(),
    };
    for _ in 0..3 {
        let port = free_node_port(&cluster.ports);
        let node = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(dir.join("node.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("node.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.crt"))
            .args(["--tls-auth-clients", "no", "--tls-cluster", "yes"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&dir)
            // Nobody gets in without a password: the default user has one
            // nobody is told, the ACL user the one the store is given.
            .args(["--requirepass", "not-the-default-user"])
            .args([
                "--user",
                USER,
                "on",
                &format!(">{PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        cluster.ports.push(port);
        cluster.nodes.push(node);
    }
    for &port in &cluster.ports {
        wait_until(&format!("node {port} answering over TLS"), || {
            cli(&dir, port)
                .arg("ping")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        });
    }
    let mut create = cli(&dir, cluster.ports[0]);
    create.args(["--cluster", "create"]);
    for port in &cluster.ports {
        create.arg(format!("127.0.0.1:{port}"));
    }
    run(create.arg("--cluster-yes"));
    for &port in &cluster.ports {
        wait_until(&format!("node {port} in a whole cluster"), || {
            cli(&dir, port)
                .args(["cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
    }
    Some(cluster)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn urls(cluster: &TlsCluster) -> Vec<String> {
    cluster
        .ports
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}"))
        .collect()
}

fn config() -> StoreConfig {
    StoreConfig {
        // No replicas here.
        min_replica_acks: 0,
        ..StoreConfig::default()
    }
}

fn access(cluster: &TlsCluster, password: &str, with_ca: bool) -> RedisAccess {
    RedisAccess {
        username: Some(USER.into()),
        password: Some(password.into()),
        ca_pem: with_ca.then(|| std::fs::read(cluster.dir.join("ca.crt")).unwrap()),
        client_cert: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_over_tls_with_an_acl_user_and_refuses_to_without_them() {
    let Some(cluster) = tokio::task::spawn_blocking(start_cluster).await.unwrap() else {
        return;
    };
    let urls = urls(&cluster);

    let store = RedisStore::connect_with(&urls, config(), &access(&cluster, PASSWORD, true))
        .await
        .expect("the client settings are valid");
    store.ping().await.expect("ping over TLS as the ACL user");
    let room = store
        .create_room(NewRoom {
            id: "r_tls".into(),
            name: "tls".into(),
            created_by: "alice".into(),
            created_at: 1,
            members: vec!["alice".into(), "bob".into()],
        })
        .await
        .expect("create a room");
    for i in 1..=5u64 {
        let appended = store
            .append(NewMessage {
                room: room.id.clone(),
                id: format!("m_{i}"),
                from: "alice".into(),
                body: format!("over TLS {i}"),
                ts: i,
                client_msg_id: Some(format!("c{i}")),
                from_member: true,
            })
            .await
            .expect("append over TLS");
        assert_eq!(appended.message.seq, i);
    }
    let history = store.messages_after(&room.id, 0, 10).await.unwrap();
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    // Group commit's own connections to the masters use the same TLS and
    // AUTH settings (the first append runs alone: the slot owners are not
    // read yet).
    let stats = store.group_commit_stats().expect("group commit is on");
    assert!(stats.batched > 0, "appends batched over TLS: {stats:?}");

    // Without the CA the nodes' certificates are not trusted; with a wrong
    // password AUTH fails. Either way: unavailable, never a plain-text or
    // unauthenticated fallback.
    for (what, access, why) in [
        ("no CA", access(&cluster, PASSWORD, false), "certificate"),
        (
            "wrong password",
            access(&cluster, "wrong", true),
            "authentication",
        ),
    ] {
        let store = RedisStore::connect_with(&urls, config(), &access)
            .await
            .expect("the client settings are valid");
        let err = store.ping().await.expect_err(what).to_string();
        println!("[redis-tls] {what}: {err}");
        assert!(
            err.to_lowercase().contains(why),
            "{what}: the error says why ({why}): {err}"
        );
    }
}

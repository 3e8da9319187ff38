//! The pieces the operator relies on, exercised with real processes: the
//! chat server's internal drain endpoint and the API server's Kubernetes
//! mode (`--require-registration`). The test plays the operator's part by
//! writing the registration through the real store into the real Redis
//! Cluster.

use std::time::Duration;

use chat_store::{RedisStore, Store, StoreConfig};
use e2e::*;

/// Tests here change which servers the API may place on: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn drain_request(server: &ChatServer, secret: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().post(format!("{}/internal/drain", server.http_url()));
    if let Some(secret) = secret {
        request = request.header("x-chat-internal-secret", secret);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_endpoint_needs_the_internal_secret_and_moves_clients_away() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(2, &[]).await else {
        return;
    };
    cluster.wait_servers_exactly(&cluster.ids()).await;
    let target = &cluster.chat[0];
    let alice = cluster.api(&unique("alice")).await;
    let mut client = WsClient::connect_to(&alice, &target.id).await;

    assert_eq!(drain_request(target, None).await, 401, "no secret");
    assert_eq!(
        drain_request(target, Some("wrong")).await,
        401,
        "wrong secret"
    );
    client.ping(serde_json::json!(1)).await;

    assert_eq!(drain_request(target, Some(INTERNAL_SECRET)).await, 202);
    let reconnect = client
        .next_of_type("reconnect", WAIT)
        .await
        .expect("a reconnect frame after the drain request");
    assert_eq!(reconnect["reason"], "draining");
    let (_, code) = client.wait_closed(WAIT).await;
    assert_eq!(code, Some(1012));

    // The server stays up (the pod is removed later) but gets no clients.
    let drained_id = target.id.clone();
    eventually(WAIT, "the drained server out of placement", || {
        let alice = &alice;
        let drained_id = drained_id.clone();
        async move {
            let servers = alice.servers().await;
            let listed_ready = servers["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == drained_id.as_str() && s["state"] == "ready");
            (!listed_ready).then_some(())
        }
    })
    .await;
    for _ in 0..6 {
        let (status, body) = alice.connect().await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["server_id"], drained_id.as_str());
    }
    let healthz = reqwest::get(format!("{}/healthz", target.http_url()))
        .await
        .unwrap();
    assert_eq!(
        healthz.status(),
        200,
        "drained server process still serves /healthz"
    );
    let readyz = reqwest::get(format!("{}/readyz", target.http_url()))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503, "a draining server is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_places_clients_only_on_registered_servers() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = redis_urls() else { return };
    let store = RedisStore::connect(
        &redis.split(',').map(str::to_owned).collect::<Vec<_>>(),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let registered_id = unique("registered");
    let stray_id = unique("stray");
    let registered = start_chat(&redis, &registered_id, &[]).await;
    let stray = start_chat(&redis, &stray_id, &[]).await;
    let cluster_key = unique("e2e-ns/chat");
    store
        .set_registered(&cluster_key, std::slice::from_ref(&registered_id))
        .await
        .unwrap();

    let port = free_port();
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--dev-tokens".to_owned(),
        "--require-registration".to_owned(),
    ];
    let mut api_process = Process::spawn(
        "api-server",
        &bin_path("api-server"),
        &args,
        &process_env(&redis),
        port,
    );
    let api_url = format!("http://127.0.0.1:{port}");
    wait_http_ok(&mut api_process, &format!("{api_url}/readyz"), STARTUP)
        .await
        .expect("api-server ready");
    let alice = Api::login(&api_url, &unique("alice")).await;

    eventually(WAIT, "the registered server listed", || {
        let alice = &alice;
        let id = registered_id.clone();
        async move {
            let servers = alice.servers().await;
            servers["servers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == id.as_str())
                .then_some(())
        }
    })
    .await;
    // The stray server reports health like any other, yet is never used.
    for _ in 0..20 {
        let (status, body) = alice.connect().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["server_id"], registered_id.as_str());
    }
    let servers = alice.servers().await;
    assert!(
        !servers["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == stray_id.as_str()),
        "unregistered server listed: {servers}"
    );

    // Registering it (the operator saw its pod become ready) admits it.
    store
        .set_registered(&cluster_key, &[registered_id.clone(), stray_id.clone()])
        .await
        .unwrap();
    eventually(WAIT, "the newly registered server placed", || {
        let alice = &alice;
        let id = stray_id.clone();
        async move {
            let (_, body) = alice.connect().await;
            (body["server_id"] == id.as_str()).then_some(())
        }
    })
    .await;
    store.set_registered(&cluster_key, &[]).await.unwrap();
    drop((registered, stray));
    tokio::time::sleep(Duration::from_millis(10)).await;
}

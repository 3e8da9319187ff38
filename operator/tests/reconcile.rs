//! Reconcile driven in-process against a mocked Kubernetes API service
//! (`tower-test`): every request the controller makes is recorded and
//! answered from a small in-memory world, so each scenario can assert which
//! objects were applied with what, which status was written, and what the
//! chat servers' side (a fake [`Fleet`]) was asked to do. No cluster needed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chat_store::{ServerHealth, ServerState};
use futures_util::StreamExt;
use gateway_api::httproutes::HttpRouteParentRefs;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use operator::controller::{reconcile, Context};
use operator::crd::{
    AutoscalingSpec, ChatCluster, ChatClusterSpec, ChatClusterStatus, DrainStatus, ExposeMode,
    ExposeSpec, GatewayExpose, IngressExpose, Recommendation, RedisSpec, RedisTls, SecretKeyRef,
    LEGACY_FINALIZER,
};
use operator::fleet::{Fleet, FleetConfig, FleetConnector, FleetError};
use serde_json::{json, Value};
use tower_test::mock::SendResponse;

// ---------------------------------------------------------------- fixtures

const NS: &str = "prod";
const NAME: &str = "chat";

fn chat_cluster(replicas: i32) -> ChatCluster {
    let mut cc = ChatCluster::new(
        NAME,
        ChatClusterSpec {
            replicas,
            autoscaling: None,
            image: "scalechat/chat-server:test".into(),
            image_pull_policy: None,
            port: 9001,
            public_url_template: None,
            expose: None,
            resources: None,
            env: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            topology_spread_constraints: Vec::new(),
            image_pull_secrets: Vec::new(),
            pod_annotations: BTreeMap::new(),
            priority_class_name: None,
            service_account_name: None,
            drain_timeout_seconds: 30,
            redis: RedisSpec {
                urls: Some(vec!["redis://r0:6379".into()]),
                secret_key_ref: None,
                tls: None,
            },
            secret_name: "chat-secrets".into(),
            api_server_url: None,
        },
    );
    cc.metadata.namespace = Some(NS.into());
    cc.metadata.uid = Some("7b6f1c1e-0000-4000-8000-000000000001".into());
    cc.metadata.generation = Some(4);
    cc.metadata.resource_version = Some("41".into());
    cc
}

fn pod(ordinal: i32, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{NAME}-{ordinal}"), "namespace": NS,
                     "uid": format!("uid-{NAME}-{ordinal}")},
        "status": {
            "podIP": format!("10.0.0.{}", ordinal + 10),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
        }
    })
}

/// The chat server id of pod `ordinal` (`<pod>.<namespace>`).
fn server_id(ordinal: i32) -> String {
    format!("{NAME}-{ordinal}.{NS}")
}

fn health(ordinal: i32, state: ServerState, connections: u64) -> ServerHealth {
    ServerHealth {
        id: server_id(ordinal),
        url: String::new(),
        internal_url: String::new(),
        state,
        connections,
        load: 0.0,
        last_seen_ms: 0,
        tickets_in_own_slot: true,
        tracks_used_tickets: true,
    }
}

/// `kubectl scale chatcluster chat --replicas 2` over three ready pods
/// with clients.
fn scaling_three_pods_to_two() -> Harness {
    let h = Harness::new(
        chat_cluster(2),
        Some(3),
        vec![pod(0, true), pod(1, true), pod(2, true)],
    );
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 5),
        health(1, ServerState::Ready, 5),
        health(2, ServerState::Ready, 4),
    ];
    h
}

/// The chat servers behind one Redis.
struct FakeFleet {
    servers: Mutex<Vec<ServerHealth>>,
    /// Redis down: reading health fails with this.
    redis_error: Mutex<Option<String>>,
    /// Chat servers answer drain requests with 403 (a rotated secret).
    refuse_drains: Mutex<bool>,
    /// Live load: every read finds one more connection on each server.
    drifting: Mutex<bool>,
    drains: Mutex<Vec<String>>,
    registered: Mutex<HashMap<String, Vec<String>>>,
    /// Registration changes are logged with the API calls, in one order.
    world: Arc<Mutex<World>>,
}

impl FakeFleet {
    fn new(world: Arc<Mutex<World>>) -> Arc<FakeFleet> {
        Arc::new(FakeFleet {
            servers: Mutex::default(),
            redis_error: Mutex::default(),
            refuse_drains: Mutex::default(),
            drifting: Mutex::default(),
            drains: Mutex::default(),
            registered: Mutex::default(),
            world,
        })
    }
}

/// One [`FakeFleet`] per Redis (by seed URLs), and every config asked for.
struct FakeConnector {
    fleets: Mutex<HashMap<Vec<String>, Arc<FakeFleet>>>,
    configs: Mutex<Vec<FleetConfig>>,
    world: Arc<Mutex<World>>,
}

impl FakeConnector {
    fn fleet(&self, redis_urls: &[&str]) -> Arc<FakeFleet> {
        let key: Vec<String> = redis_urls.iter().map(|u| u.to_string()).collect();
        self.fleets
            .lock()
            .unwrap()
            .entry(key)
            .or_insert_with(|| FakeFleet::new(self.world.clone()))
            .clone()
    }
}

#[async_trait]
impl FleetConnector for FakeConnector {
    async fn connect(&self, config: &FleetConfig) -> Result<Arc<dyn Fleet>, FleetError> {
        self.configs.lock().unwrap().push(config.clone());
        let urls: Vec<&str> = config.redis_urls.iter().map(String::as_str).collect();
        Ok(self.fleet(&urls))
    }
}

#[async_trait]
impl Fleet for FakeFleet {
    async fn servers(&self) -> Result<Vec<ServerHealth>, FleetError> {
        if let Some(e) = self.redis_error.lock().unwrap().clone() {
            return Err(FleetError(e));
        }
        let mut servers = self.servers.lock().unwrap();
        if *self.drifting.lock().unwrap() {
            servers.iter_mut().for_each(|s| s.connections += 1);
        }
        Ok(servers.clone())
    }
    async fn request_drain(&self, address: &str) -> Result<(), FleetError> {
        self.drains.lock().unwrap().push(address.to_owned());
        if *self.refuse_drains.lock().unwrap() {
            return Err(FleetError(format!(
                "drain request to {address}: HTTP 403 Forbidden"
            )));
        }
        Ok(())
    }
    async fn set_registered(&self, cluster: &str, ids: &[String]) -> Result<(), FleetError> {
        if let Some(e) = self.redis_error.lock().unwrap().clone() {
            return Err(FleetError(e));
        }
        self.world.lock().unwrap().calls.push(Call {
            method: "FLEET".into(),
            path: format!("set_registered {cluster}"),
            query: String::new(),
            content_type: String::new(),
            body: json!(ids),
        });
        self.registered
            .lock()
            .unwrap()
            .insert(cluster.to_owned(), ids.to_vec());
        Ok(())
    }
}

/// One request the controller made.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// The in-memory API server: what exists, and every call made.
struct World {
    cluster: ChatCluster,
    statefulset_replicas: Option<i32>,
    pods: Vec<Value>,
    /// The StatefulSet's status; default: its rollout is complete.
    statefulset_status: Option<Value>,
    /// The API server refuses the StatefulSet apply (422) with this message.
    refuse_statefulset_apply: Option<String>,
    /// The answer to deleting a pod (200, or 404 when it is gone already).
    pod_delete_status: StatusCode,
    /// HorizontalPodAutoscalers in the namespace.
    hpas: Vec<Value>,
    /// The next patch of the ChatCluster object fails with 409 Conflict
    /// (someone else changed it since it was read).
    conflict_on_next_object_patch: bool,
    /// Secrets the chart's Role lets the operator get: its own, plus
    /// `operator.secretNames`.
    role_secret_names: Vec<String>,
    /// Secrets by name: key -> value.
    secrets: HashMap<String, BTreeMap<String, String>>,
    calls: Vec<Call>,
    /// Serving the controller's watches: lists answer, status writes are
    /// kept, and a status write that changes the status is a MODIFIED
    /// event for the ChatCluster watch (as the API server does).
    live: bool,
    /// Watch requests not answered yet: path and the reply handle.
    pending_watches: Vec<(String, SendResponse<Response<Body>>)>,
    /// ChatCluster watch events not delivered yet.
    cluster_events: Vec<Value>,
    /// Services, HTTPRoutes and Ingresses as applied, by resource and
    /// name; lists honour the label selector, DELETE removes.
    stored: BTreeMap<String, BTreeMap<String, Value>>,
    /// No Gateway API CRDs installed: HTTPRoute requests answer 404.
    no_gateway_api: bool,
}

const CRD_GROUP: &str = "chat.scalechat.dev/v1alpha1";

/// A list answer.
fn list(
    api_version: &str,
    kind: &str,
    version: Option<String>,
    items: Value,
) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        json!({"apiVersion": api_version, "kind": kind,
               "metadata": {"resourceVersion": version.unwrap_or_else(|| "1".into())},
               "items": items}),
    )
}

impl World {
    /// A change of the ChatCluster as the API server makes it: a new
    /// resourceVersion and a MODIFIED event.
    fn modified(&mut self) {
        let rv: u64 = self
            .cluster
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or("0")
            .parse()
            .unwrap();
        self.cluster.metadata.resource_version = Some((rv + 1).to_string());
        self.cluster_events
            .push(json!({"type": "MODIFIED", "object": self.cluster}));
    }

    /// Answers a pending ChatCluster watch with the events so far (the
    /// watcher then watches again from the last resourceVersion).
    fn deliver_events(&mut self) {
        if self.cluster_events.is_empty() {
            return;
        }
        let Some(i) = self
            .pending_watches
            .iter()
            .position(|(p, _)| p.ends_with("/chatclusters"))
        else {
            return;
        };
        let (_, send) = self.pending_watches.remove(i);
        let lines: String = self
            .cluster_events
            .drain(..)
            .map(|e| format!("{e}\n"))
            .collect();
        send.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from(lines.into_bytes()))
                .unwrap(),
        );
    }

    fn statefulset_status(&self, replicas: i32) -> Value {
        self.statefulset_status.clone().unwrap_or_else(|| {
            json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": replicas, "currentRevision": "chat-1", "updateRevision": "chat-1"})
        })
    }

    fn answer(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        if let Some((resource, name)) = stored_object(path) {
            return self.answer_stored(method, resource, name, query, body);
        }
        let base = format!("/apis/chat.scalechat.dev/v1alpha1/namespaces/{NS}/chatclusters/{NAME}");
        let sts = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{NAME}");
        match (method, path) {
            ("GET", p) if p == format!("/apis/{CRD_GROUP}/namespaces/{NS}/chatclusters") => {
                let version = self.cluster.metadata.resource_version.clone();
                list(CRD_GROUP, "ChatClusterList", version, json!([self.cluster]))
            }
            ("GET", p)
                if p == format!(
                    "/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers"
                ) =>
            {
                list(
                    "autoscaling/v2",
                    "HorizontalPodAutoscalerList",
                    None,
                    json!(self.hpas),
                )
            }
            ("GET", p) if p == format!("/apis/apps/v1/namespaces/{NS}/statefulsets") => {
                list("apps/v1", "StatefulSetList", None, json!([]))
            }
            ("PATCH", p) if p == base && self.conflict_on_next_object_patch => {
                self.conflict_on_next_object_patch = false;
                (
                    StatusCode::CONFLICT,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "Conflict", "code": 409,
                           "message": "the object has been modified; please apply your changes to the latest version"}),
                )
            }
            ("PATCH", p) if self.live && p == format!("{base}/status") => {
                let status: ChatClusterStatus =
                    serde_json::from_value(body["status"].clone()).unwrap();
                if self.cluster.status.as_ref() != Some(&status) {
                    self.cluster.status = Some(status);
                    self.modified();
                }
                (StatusCode::OK, serde_json::to_value(&self.cluster).unwrap())
            }
            ("PATCH", p) if p == base || p == format!("{base}/status") => {
                let mut object = serde_json::to_value(&self.cluster).unwrap();
                if let Some(status) = body.get("status") {
                    object["status"] = status.clone();
                }
                (StatusCode::OK, object)
            }
            ("GET", p) if p == sts => match self.statefulset_replicas {
                Some(n) => (
                    StatusCode::OK,
                    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                           "metadata": {"name": NAME, "namespace": NS, "generation": 1},
                           "spec": {"replicas": n, "selector": {}, "serviceName": "chat-chat",
                                    "template": {}},
                           "status": self.statefulset_status(n)}),
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            },
            ("GET", p) if p.starts_with(&format!("/api/v1/namespaces/{NS}/secrets/")) => {
                let name = p.rsplit('/').next().unwrap();
                match self.secrets.get(name) {
                    Some(data) => {
                        let data: BTreeMap<&String, String> = data
                            .iter()
                            .map(|(k, v)| (k, base64(v.as_bytes())))
                            .collect();
                        (
                            StatusCode::OK,
                            json!({"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": name, "namespace": NS}, "data": data}),
                        )
                    }
                    None => (
                        StatusCode::NOT_FOUND,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                }
            }
            ("GET", p) if p == format!("/api/v1/namespaces/{NS}/pods") => (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": self.pods}),
            ),
            ("PATCH", p) if p == sts => {
                if let Some(message) = &self.refuse_statefulset_apply {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "Invalid", "code": 422, "message": message}),
                    );
                }
                self.statefulset_replicas = body["spec"]["replicas"].as_i64().map(|n| n as i32);
                let n = self.statefulset_replicas.unwrap_or(0);
                let mut answer = body.clone();
                answer["metadata"]["generation"] = json!(1);
                answer["status"] = self.statefulset_status(n);
                (StatusCode::OK, answer)
            }
            ("PATCH", _) => (StatusCode::OK, body.clone()),
            ("POST", p) if p.ends_with("/events") => (StatusCode::CREATED, body.clone()),
            ("DELETE", p) if p.contains("/pods/") && self.pod_delete_status != StatusCode::OK => (
                self.pod_delete_status,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "code": self.pod_delete_status.as_u16(), "message": "not found"}),
            ),
            ("DELETE", p) if p.contains("/pods/") => {
                let name = p.rsplit('/').next().unwrap();
                (
                    StatusCode::OK,
                    pod(name.rsplit('-').next().unwrap().parse().unwrap(), false),
                )
            }
            _ => panic!("unexpected request {method} {path}"),
        }
    }
}

impl World {
    /// Services, HTTPRoutes and Ingresses: kept as applied.
    fn answer_stored(
        &mut self,
        method: &str,
        resource: &str,
        name: Option<&str>,
        query: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        if resource == "httproutes" && self.no_gateway_api {
            return not_found();
        }
        let store = self.stored.entry(resource.to_owned()).or_default();
        match (method, name) {
            ("PATCH", Some(name)) => {
                store.insert(name.to_owned(), body.clone());
                (StatusCode::OK, body.clone())
            }
            ("GET", None) => {
                let selector = label_selector(query);
                let items: Vec<&Value> = store
                    .values()
                    .filter(|o| selects(&selector, &o["metadata"]["labels"]))
                    .collect();
                let (api_version, kind) = match resource {
                    "services" => ("v1", "ServiceList"),
                    "httproutes" => ("gateway.networking.k8s.io/v1", "HTTPRouteList"),
                    _ => ("networking.k8s.io/v1", "IngressList"),
                };
                list(api_version, kind, None, json!(items))
            }
            ("DELETE", Some(name)) => match store.remove(name) {
                Some(object) => (StatusCode::OK, object),
                None => not_found(),
            },
            _ => panic!("unexpected request {method} {resource} {name:?}"),
        }
    }
}

/// (resource, name) of a request for a Service, HTTPRoute or Ingress.
fn stored_object(path: &str) -> Option<(&str, Option<&str>)> {
    let (_, rest) = path.split_once(&format!("/namespaces/{NS}/"))?;
    let mut parts = rest.split('/');
    let resource = parts.next()?;
    let name = parts.next();
    ["services", "httproutes", "ingresses"]
        .contains(&resource)
        .then_some((resource, name))
}

/// The terms of a request's `labelSelector`: `key=value`, or `key` alone
/// (the label exists).
fn label_selector(query: &str) -> Vec<(String, Option<String>)> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "labelSelector")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|term| match term.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (term.to_owned(), None),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn selects(selector: &[(String, Option<String>)], labels: &Value) -> bool {
    selector.iter().all(|(key, value)| match value {
        Some(v) => labels[key] == json!(v),
        None => labels.get(key).is_some(),
    })
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// Standard base64, for Secret data.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Harness {
    client: Client,
    world: Arc<Mutex<World>>,
    /// The fleet of the default cluster's Redis (`redis://r0:6379`).
    fleet: Arc<FakeFleet>,
    connector: Arc<FakeConnector>,
    ctx: Arc<Context>,
    now: Arc<Mutex<i64>>,
}

impl Harness {
    fn new(cluster: ChatCluster, statefulset_replicas: Option<i32>, pods: Vec<Value>) -> Harness {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NS);
        let harness_client = client.clone();
        let world = Arc::new(Mutex::new(World {
            cluster,
            statefulset_replicas,
            pods,
            secrets: HashMap::from([(
                "chat-secrets".to_owned(),
                BTreeMap::from([("internalSecret".to_owned(), "internal-s3cret".to_owned())]),
            )]),
            calls: Vec::new(),
            statefulset_status: None,
            refuse_statefulset_apply: None,
            pod_delete_status: StatusCode::OK,
            hpas: Vec::new(),
            conflict_on_next_object_patch: false,
            role_secret_names: vec!["chat-secrets".into()],
            live: false,
            pending_watches: Vec::new(),
            cluster_events: Vec::new(),
            stored: BTreeMap::new(),
            no_gateway_api: false,
        }));
        let answering = world.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or_default().to_owned();
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let mut w = answering.lock().unwrap();
                w.calls.push(Call {
                    method: method.clone(),
                    path: path.clone(),
                    query: query.clone(),
                    content_type,
                    body: body.clone(),
                });
                if query.split('&').any(|q| q == "watch=true") {
                    w.pending_watches.push((path, send));
                } else {
                    let (status, answer) = w.answer(&method, &path, &query, &body);
                    send.send_response(
                        Response::builder()
                            .status(status)
                            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                            .unwrap(),
                    );
                }
                w.deliver_events();
            }
        });
        let connector = Arc::new(FakeConnector {
            fleets: Mutex::default(),
            configs: Mutex::default(),
            world: world.clone(),
        });
        let fleet = connector.fleet(&["redis://r0:6379"]);
        let metrics = chat_ops::Metrics::new();
        let mut ctx = Context::new(client, connector.clone(), &metrics, "test");
        let now = Arc::new(Mutex::new(1_000_000i64));
        let clock = now.clone();
        Arc::get_mut(&mut ctx).unwrap().clock = Arc::new(move || *clock.lock().unwrap());
        Harness {
            client: harness_client,
            world,
            fleet,
            connector,
            ctx,
            now,
        }
    }

    async fn reconcile(&self) -> Action {
        self.reconcile_result().await.expect("reconcile succeeded")
    }

    async fn reconcile_result(&self) -> Result<Action, operator::controller::Error> {
        let cluster = self.world.lock().unwrap().cluster.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            reconcile(Arc::new(cluster), self.ctx.clone()),
        )
        .await
        .expect("reconcile finished")
    }

    fn calls(&self, method: &str, path_part: &str) -> Vec<Call> {
        self.calls_matching(|c| c.method == method && c.path.contains(path_part))
    }

    fn calls_matching(&self, keep: impl Fn(&Call) -> bool) -> Vec<Call> {
        let world = self.world.lock().unwrap();
        world.calls.iter().filter(|c| keep(c)).cloned().collect()
    }

    fn applied_replicas(&self) -> Option<i64> {
        self.calls("PATCH", "/statefulsets/")
            .last()
            .and_then(|c| c.body["spec"]["replicas"].as_i64())
    }

    fn last_status(&self) -> Value {
        self.calls("PATCH", "/status")
            .last()
            .expect("a status patch")
            .body["status"]
            .clone()
    }

    /// Carries the written status into the world, as the API server would.
    fn persist_status(&self) {
        let status: ChatClusterStatus = serde_json::from_value(self.last_status()).unwrap();
        self.world.lock().unwrap().cluster.status = Some(status);
        self.world.lock().unwrap().calls.clear();
    }

    fn event_reasons(&self) -> Vec<String> {
        self.calls("POST", "/events")
            .iter()
            .map(|c| c.body["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn registered(&self) -> Vec<String> {
        self.fleet
            .registered
            .lock()
            .unwrap()
            .get(&format!("{NS}/{NAME}"))
            .cloned()
            .unwrap_or_default()
    }
}

/// Every scenario ends by checking each API call it made against the
/// chart's Role (charts/chat/templates/operator-rbac.yaml), and that every
/// server-side apply is forced under the operator's field manager.
impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let world = self.world.lock().unwrap();
        let rules = role_rules(&world.role_secret_names);
        for call in world.calls.iter().filter(|c| c.method != "FLEET") {
            let (group, resource, name, verb) = access(call);
            assert!(
                rules
                    .iter()
                    .any(|r| r.allows(&group, &resource, &name, &verb)),
                "the chart's Role does not allow {verb} {group}/{resource} {name}: {} {}?{}",
                call.method,
                call.path,
                call.query
            );
            if call.content_type == "application/apply-patch+yaml" {
                // An apply that creates the object is authorized as create
                // (a subresource's object exists already).
                assert!(
                    resource.contains('/')
                        || rules
                        .iter()
                        .any(|r| r.allows(&group, &resource, &name, "create")),
                    "the chart's Role does not allow create {group}/{resource}, which an apply that creates it needs: {}",
                    call.path
                );
                assert!(
                    call.query.contains("fieldManager=chat-operator")
                        && call.query.contains("force=true"),
                    "server-side apply without fieldManager=chat-operator&force=true: {} ?{}",
                    call.path,
                    call.query
                );
            }
        }
    }
}

/// One rule of the chart's operator Roles.
#[derive(Debug)]
struct RoleRule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Option<Vec<String>>,
}

impl RoleRule {
    fn allows(&self, group: &str, resource: &str, name: &str, verb: &str) -> bool {
        let has = |list: &[String], x: &str| list.iter().any(|v| v == x);
        has(&self.groups, group)
            && has(&self.resources, resource)
            && has(&self.verbs, verb)
            && self.names.as_ref().is_none_or(|n| has(n, name))
    }
}

/// The `rules:` of the Roles in operator-rbac.yaml, with the template's
/// Secret and Lease names filled in and its other template lines dropped.
fn role_rules(secret_names: &[String]) -> Vec<RoleRule> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/chat/templates/operator-rbac.yaml"
    );
    let template = std::fs::read_to_string(path).unwrap();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in template.lines() {
        if line == "rules:" {
            current = Some(String::from("rules:\n"));
            continue;
        }
        if line.starts_with("---") || line.starts_with("{{- if") {
            blocks.extend(current.take());
            continue;
        }
        let Some(block) = current.as_mut() else {
            continue;
        };
        if line.contains("include \"chat.secretName\"") {
            for name in secret_names {
                block.push_str(&format!("      - {name:?}\n"));
            }
        } else if line.contains("include \"chat.operatorLeaseName\"") {
            block.push_str("    resourceNames: [\"chat-operator\"]\n");
        } else if !line.contains("{{") {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks.extend(current);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    blocks
        .iter()
        .flat_map(|block| {
            let parsed: Value = serde_saphyr::from_str(block)
                .unwrap_or_else(|e| panic!("parsing the Role's rules: {e}\n{block}"));
            parsed["rules"].as_array().unwrap().clone()
        })
        .map(|rule| RoleRule {
            groups: strings(&rule["apiGroups"]),
            resources: strings(&rule["resources"]),
            verbs: strings(&rule["verbs"]),
            names: rule.get("resourceNames").map(strings),
        })
        .collect()
}

/// (API group, resource[/subresource], name, verb) of a request.
fn access(call: &Call) -> (String, String, String, String) {
    let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", call.path),
    };
    let rest = match rest {
        ["namespaces", _, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, name) = match rest {
        [resource] => (resource.to_string(), ""),
        [resource, name] => (resource.to_string(), *name),
        [resource, name, sub] => (format!("{resource}/{sub}"), *name),
        _ => panic!("unexpected path {}", call.path),
    };
    let verb = match (call.method.as_str(), name.is_empty()) {
        ("GET", false) => "get",
        ("GET", true) if call.query.split('&').any(|q| q == "watch=true") => "watch",
        ("GET", true) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group.into(), resource, name.into(), verb.into())
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

// ---------------------------------------------------------------- scenarios

#[tokio::test]
async fn reconcile_creates_the_owned_objects_with_server_side_apply() {
    let h = Harness::new(chat_cluster(3), None, vec![]);
    let action = h.reconcile().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    for kind in [
        "/services/chat-chat",
        "/statefulsets/chat",
        "/poddisruptionbudgets/chat",
    ] {
        let patch = h.calls("PATCH", kind);
        assert_eq!(patch.len(), 1, "{kind}");
        assert_eq!(
            patch[0].body["metadata"]["ownerReferences"][0]["kind"],
            "ChatCluster"
        );
    }
    assert_eq!(h.applied_replicas(), Some(3));
    let status = h.last_status();
    assert_eq!(status["observedGeneration"], 4);
    assert_eq!(
        status["labelSelector"],
        "app.kubernetes.io/name=chat-server,chat.scalechat.dev/cluster=chat"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert!(
        h.registered().is_empty(),
        "no ready pods, nothing registered"
    );
}

#[tokio::test]
async fn spec_change_updates_the_statefulset_and_records_an_event() {
    let h = Harness::new(chat_cluster(4), Some(2), vec![pod(0, true), pod(1, true)]);
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(4));
    assert!(
        h.event_reasons().contains(&"ScaledUp".to_owned()),
        "{:?}",
        h.event_reasons()
    );
}

#[tokio::test]
async fn status_reflects_pods_health_and_registers_ready_endpoints() {
    let h = Harness::new(
        chat_cluster(3),
        Some(3),
        vec![pod(0, true), pod(1, true), pod(2, false)],
    );
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 5),
        health(1, ServerState::Ready, 7),
        // Another cluster's server is not counted.
        ServerHealth {
            id: "other-0".into(),
            ..health(0, ServerState::Ready, 100)
        },
    ];
    h.reconcile().await;
    let status = h.last_status();
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(status["connections"], 12);
    assert_eq!(
        status["endpoints"][0],
        json!({"pod": "chat-0", "address": "10.0.0.10:9001", "state": "ready", "connections": 5})
    );
    assert_eq!(status["endpoints"][2]["state"], "unknown");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(h.registered(), vec![server_id(0), server_id(1)]);
}

#[tokio::test]
async fn scale_down_drains_the_leaving_pod_before_shrinking() {
    let h = scaling_three_pods_to_two();
    // 1. The leaving pod is asked to drain; the StatefulSet keeps 3 pods.
    let action = h.reconcile().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    assert_eq!(*h.fleet.drains.lock().unwrap(), vec!["10.0.0.12:9001"]);
    assert_eq!(h.applied_replicas(), Some(3));
    assert_eq!(
        h.registered(),
        vec![server_id(0), server_id(1)],
        "a leaving pod gets no new clients"
    );
    let status = h.last_status();
    assert_eq!(
        status["draining"],
        json!([{"pod": "chat-2", "since": 1_000_000, "uid": "uid-chat-2"}])
    );
    assert_eq!(condition(&status, "Progressing")["reason"], "Draining");
    assert!(h.event_reasons().contains(&"DrainStarted".to_owned()));
    h.persist_status();

    // 2. Clients still moving: wait, without asking again.
    h.fleet.servers.lock().unwrap()[2] = health(2, ServerState::Draining, 1);
    *h.now.lock().unwrap() += 3;
    h.reconcile().await;
    assert_eq!(h.fleet.drains.lock().unwrap().len(), 1);
    assert_eq!(h.applied_replicas(), Some(3));
    h.persist_status();

    // 3. Empty: now the StatefulSet shrinks and the drain record clears.
    h.fleet.servers.lock().unwrap()[2] = health(2, ServerState::Draining, 0);
    *h.now.lock().unwrap() += 3;
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(2));
    assert!(h
        .last_status()
        .get("draining")
        .is_none_or(|d| d.as_array().is_none_or(|a| a.is_empty())));
    assert!(h.event_reasons().contains(&"ScaledDown".to_owned()));
}

#[tokio::test]
async fn drain_timeout_lets_the_scale_down_proceed() {
    let mut cc = chat_cluster(1);
    cc.status = Some(ChatClusterStatus {
        draining: vec![DrainStatus {
            pod: "chat-1".into(),
            since: 1_000_000 - 31,
            uid: None,
        }],
        ..ChatClusterStatus::default()
    });
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    *h.fleet.servers.lock().unwrap() = vec![health(1, ServerState::Draining, 9)];
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(1));
}

#[tokio::test]
async fn autoscaling_sets_replicas_from_connections() {
    let mut cc = chat_cluster(2);
    cc.spec.autoscaling = Some(AutoscalingSpec {
        enabled: true,
        min_replicas: 2,
        max_replicas: 8,
        target_connections_per_pod: 1000,
        scale_down_stabilization_seconds: 300,
    });
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 2600),
        health(1, ServerState::Ready, 2400),
    ];
    h.reconcile().await;
    assert_eq!(
        h.applied_replicas(),
        Some(5),
        "5000 connections at 1000 per pod"
    );
    assert_eq!(h.last_status()["recommendations"][0]["replicas"], 5);
}

#[tokio::test]
async fn invalid_spec_is_reported_as_degraded_not_applied() {
    let mut cc = chat_cluster(2);
    cc.spec.autoscaling = Some(AutoscalingSpec {
        enabled: true,
        min_replicas: 6,
        max_replicas: 3,
        target_connections_per_pod: 1000,
        scale_down_stabilization_seconds: 0,
    });
    let h = Harness::new(cc, None, vec![]);
    let action = h.reconcile().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(h.calls("PATCH", "/statefulsets/").is_empty());
    let status = h.last_status();
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("minReplicas"));
    assert!(h.event_reasons().contains(&"InvalidSpec".to_owned()));
}

// ------------------------------------------- issue 15: one fleet per cluster

#[tokio::test]
async fn each_cluster_uses_the_redis_and_secret_of_its_own_spec() {
    let mut cc = chat_cluster(2);
    cc.spec.redis = RedisSpec {
        urls: None,
        secret_key_ref: Some(SecretKeyRef {
            name: "team-redis".into(),
            key: "urls".into(),
        }),
        tls: None,
    };
    cc.spec.secret_name = "team-secrets".into();
    let h = Harness::new(cc, Some(3), vec![pod(0, true), pod(1, true), pod(2, true)]);
    {
        let mut w = h.world.lock().unwrap();
        w.secrets.insert(
            "team-redis".into(),
            BTreeMap::from([("urls".into(), "redis://t0:6379, redis://t1:6379".into())]),
        );
        w.secrets.insert(
            "team-secrets".into(),
            BTreeMap::from([("internalSecret".into(), "team-internal".into())]),
        );
        // As the user would list them in operator.secretNames.
        w.role_secret_names
            .extend(["team-redis".to_owned(), "team-secrets".to_owned()]);
    }
    let team = h.connector.fleet(&["redis://t0:6379", "redis://t1:6379"]);
    *team.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 10),
        health(1, ServerState::Ready, 20),
        health(2, ServerState::Ready, 30),
    ];
    // The operator's "own" Redis knows nothing of this cluster.
    h.reconcile().await;

    let configs = h.connector.configs.lock().unwrap().clone();
    assert_eq!(
        configs.last(),
        Some(&FleetConfig {
            redis_urls: vec!["redis://t0:6379".into(), "redis://t1:6379".into()],
            internal_secret: "team-internal".into(),
            redis_ca_pem: None,
            redis_client_cert: None,
        })
    );
    let status = h.last_status();
    assert_eq!(status["connections"], 60, "health from the cluster's Redis");
    assert_eq!(
        *team.drains.lock().unwrap(),
        vec!["10.0.0.12:9001"],
        "the leaving pod, which has clients, is drained through its own fleet"
    );
    assert_eq!(
        h.applied_replicas(),
        Some(3),
        "not removed before its drain"
    );
    assert_eq!(
        team.registered.lock().unwrap()[&format!("{NS}/{NAME}")],
        vec![server_id(0), server_id(1)],
        "registered in the cluster's Redis"
    );
    assert!(h.registered().is_empty(), "nothing in another Redis");
}

/// Redis with TLS from a private CA and a client certificate (managed
/// Redis Cluster services): the chat server pods get the files mounted and
/// their paths in the environment, and the operator's own connection uses
/// the same CA and certificate.
#[tokio::test]
async fn redis_tls_files_reach_the_pods_and_the_operators_connection() {
    let mut cc = chat_cluster(2);
    cc.spec.redis = RedisSpec {
        urls: Some(vec!["rediss://r0:6380".into()]),
        secret_key_ref: None,
        tls: Some(RedisTls {
            ca_secret_key_ref: Some(SecretKeyRef {
                name: "redis-ca".into(),
                key: "ca.pem".into(),
            }),
            client_cert_secret_name: Some("redis-client".into()),
        }),
    };
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    {
        let mut w = h.world.lock().unwrap();
        w.secrets.insert(
            "redis-ca".into(),
            BTreeMap::from([("ca.pem".into(), "CA PEM".into())]),
        );
        w.secrets.insert(
            "redis-client".into(),
            BTreeMap::from([
                ("tls.crt".into(), "CERT PEM".into()),
                ("tls.key".into(), "KEY PEM".into()),
            ]),
        );
        w.role_secret_names
            .extend(["redis-ca".to_owned(), "redis-client".to_owned()]);
    }
    h.reconcile().await;

    let configs = h.connector.configs.lock().unwrap().clone();
    let config = configs.last().expect("a fleet connection");
    assert_eq!(config.redis_ca_pem.as_deref(), Some(&b"CA PEM"[..]));
    assert_eq!(
        config.redis_client_cert,
        Some((b"CERT PEM".to_vec(), b"KEY PEM".to_vec()))
    );

    let sts = h
        .calls("PATCH", "/statefulsets/")
        .last()
        .unwrap()
        .body
        .clone();
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: BTreeMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect();
    assert_eq!(env["CHAT_REDIS_CA_FILE"], "/etc/chat/redis-tls/ca/ca.crt");
    assert_eq!(
        env["CHAT_REDIS_CLIENT_CERT_FILE"],
        "/etc/chat/redis-tls/client/tls.crt"
    );
    assert_eq!(
        env["CHAT_REDIS_CLIENT_KEY_FILE"],
        "/etc/chat/redis-tls/client/tls.key"
    );
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["secret"]["secretName"], "redis-ca");
    assert_eq!(volumes[0]["secret"]["items"][0]["key"], "ca.pem");
    assert_eq!(volumes[0]["secret"]["items"][0]["path"], "ca.crt");
    assert_eq!(volumes[1]["secret"]["secretName"], "redis-client");
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().all(|m| m["readOnly"] == true), "{mounts:?}");
    assert_eq!(mounts[0]["mountPath"], "/etc/chat/redis-tls/ca");
}

#[tokio::test]
async fn server_ids_are_unique_across_namespaces() {
    let h = Harness::new(chat_cluster(1), Some(1), vec![pod(0, true)]);
    // A ChatCluster of the same name in another namespace shares the Redis.
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 4),
        ServerHealth {
            id: format!("{NAME}-0.staging"),
            ..health(0, ServerState::Ready, 100)
        },
    ];
    h.reconcile().await;
    let status = h.last_status();
    assert_eq!(status["connections"], 4, "{status}");
    assert_eq!(h.registered(), vec![server_id(0)]);
    let sts = h
        .calls("PATCH", "/statefulsets/")
        .last()
        .unwrap()
        .body
        .clone();
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
    let id = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CHAT_SERVER_ID")
        .unwrap();
    assert_eq!(id["value"], "$(POD_NAME).$(POD_NAMESPACE)");
}

// ------------------------------- issue 15: Redis and drain failures are not fatal

#[tokio::test]
async fn redis_down_still_applies_the_owned_objects_and_reports_degraded() {
    // A scale-down from 3 to 2 was under way when Redis went down.
    let mut cc = chat_cluster(2);
    cc.status = Some(ChatClusterStatus {
        draining: vec![DrainStatus {
            pod: "chat-2".into(),
            since: 1_000_000 - 5,
            uid: None,
        }],
        connections: 40,
        ..ChatClusterStatus::default()
    });
    cc.spec.image = "scalechat/chat-server:new".into();
    let h = Harness::new(cc, Some(3), vec![pod(0, true), pod(1, true), pod(2, true)]);
    *h.fleet.redis_error.lock().unwrap() =
        Some("reading chat server health: connection refused".into());
    h.reconcile().await;

    // The spec change (a new image) is applied; the replica count is held,
    // because an unknown load is not an empty pod.
    let sts = h
        .calls("PATCH", "/statefulsets/")
        .last()
        .unwrap()
        .body
        .clone();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "scalechat/chat-server:new"
    );
    assert_eq!(h.applied_replicas(), Some(3), "no pod removed blind");
    assert_eq!(h.calls("PATCH", "/services/chat-chat").len(), 1);
    assert_eq!(h.calls("PATCH", "/poddisruptionbudgets/chat").len(), 1);
    assert!(h.fleet.drains.lock().unwrap().is_empty());
    let status = h.last_status();
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "RedisUnavailable");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    assert_eq!(
        status["draining"],
        json!([{"pod": "chat-2", "since": 1_000_000 - 5, "uid": "uid-chat-2"}]),
        "the drain record survives"
    );
    assert!(h.event_reasons().contains(&"RedisUnavailable".to_owned()));
    let warning = h
        .calls("POST", "/events")
        .into_iter()
        .find(|c| c.body["reason"] == "RedisUnavailable")
        .unwrap();
    assert_eq!(warning.body["type"], "Warning");

    // Redis back: the scale-down resumes where it was.
    h.persist_status();
    *h.fleet.redis_error.lock().unwrap() = None;
    *h.fleet.servers.lock().unwrap() = vec![health(2, ServerState::Draining, 0)];
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(2));
    assert_eq!(condition(&h.last_status(), "Degraded")["status"], "False");
}

#[tokio::test]
async fn a_refused_drain_is_recorded_first_and_its_timeout_still_runs() {
    let h = scaling_three_pods_to_two();
    *h.fleet.refuse_drains.lock().unwrap() = true;
    h.reconcile().await;
    assert_eq!(*h.fleet.drains.lock().unwrap(), vec!["10.0.0.12:9001"]);
    // The record was written before the request went out.
    let order: Vec<String> = h
        .calls_matching(|c| c.path.ends_with("/status"))
        .iter()
        .map(|c| c.body["status"]["draining"].to_string())
        .collect();
    assert_eq!(
        order[0],
        json!([{"pod": "chat-2", "since": 1_000_000, "uid": "uid-chat-2"}]).to_string()
    );
    let status = h.last_status();
    assert_eq!(condition(&status, "Degraded")["reason"], "DrainFailed");
    assert!(h.event_reasons().contains(&"DrainFailed".to_owned()));
    assert_eq!(h.applied_replicas(), Some(3));
    h.persist_status();

    // A spec change meanwhile is still applied (nothing is blocked).
    h.world.lock().unwrap().cluster.spec.image = "scalechat/chat-server:new".into();
    *h.now.lock().unwrap() += 10;
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(3));
    h.persist_status();

    // After drainTimeoutSeconds the pod goes anyway (its SIGTERM drain is
    // the safety net).
    *h.now.lock().unwrap() += 21;
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(2));
    // Its clients were still on it: counted and told (ChatDrainTimedOut
    // alerts on the counter).
    assert!(h.event_reasons().contains(&"DrainTimedOut".to_owned()));
    assert_eq!(h.ctx.metrics.drain_timeouts.get(), 1);
}

// -------------------------- issue 15: the invalid-spec status keeps the rest

#[tokio::test]
async fn invalid_spec_status_keeps_replicas_selector_recommendations_and_drains() {
    let mut cc = chat_cluster(2);
    cc.status = Some(ChatClusterStatus {
        observed_generation: Some(3),
        replicas: 3,
        ready_replicas: 3,
        label_selector: "app.kubernetes.io/name=chat-server,chat.scalechat.dev/cluster=chat".into(),
        connections: 12,
        recommendations: vec![Recommendation {
            at: 999_990,
            replicas: 3,
        }],
        draining: vec![DrainStatus {
            pod: "chat-2".into(),
            since: 999_995,
            uid: None,
        }],
        ..ChatClusterStatus::default()
    });
    cc.spec.autoscaling = Some(AutoscalingSpec {
        enabled: true,
        min_replicas: 6,
        max_replicas: 3,
        target_connections_per_pod: 1000,
        scale_down_stabilization_seconds: 0,
    });
    let h = Harness::new(cc, Some(3), vec![]);
    h.reconcile().await;
    let status = h.last_status();
    assert_eq!(condition(&status, "Degraded")["reason"], "InvalidSpec");
    assert_eq!(status["observedGeneration"], 4);
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(
        status["labelSelector"],
        "app.kubernetes.io/name=chat-server,chat.scalechat.dev/cluster=chat"
    );
    assert_eq!(
        status["recommendations"],
        json!([{"at": 999_990, "replicas": 3}])
    );
    assert_eq!(
        status["draining"],
        json!([{"pod": "chat-2", "since": 999_995}])
    );
}

// ---------------- issue 15: no finalizer, so deletion never hangs on cleanup

fn deleted(mut cc: ChatCluster) -> ChatCluster {
    cc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_000_000).unwrap(),
    ));
    cc
}

/// The merge patches of the ChatCluster object itself (not its status).
fn object_patches(h: &Harness) -> Vec<Value> {
    h.calls("PATCH", &format!("/chatclusters/{NAME}"))
        .into_iter()
        .filter(|c| !c.path.ends_with("/status"))
        .map(|c| c.body)
        .collect()
}

#[tokio::test]
async fn a_new_cluster_gets_no_finalizer_and_is_applied_at_once() {
    let h = Harness::new(chat_cluster(3), None, vec![]);
    h.reconcile().await;
    assert!(object_patches(&h).is_empty(), "{:?}", object_patches(&h));
    assert_eq!(h.applied_replicas(), Some(3));
}

#[tokio::test]
async fn a_live_cluster_loses_the_legacy_finalizer_and_is_applied() {
    let mut cc = chat_cluster(2);
    cc.metadata.finalizers = Some(vec!["example.com/keep".into(), LEGACY_FINALIZER.into()]);
    let h = Harness::new(cc, Some(2), vec![]);
    h.reconcile().await;
    assert_eq!(
        object_patches(&h),
        vec![json!({"metadata": {"resourceVersion": "41", "finalizers": ["example.com/keep"]}})]
    );
    assert_eq!(h.applied_replicas(), Some(2));
}

#[tokio::test]
async fn deleting_a_legacy_cluster_deregisters_then_drops_the_finalizer() {
    let mut cc = deleted(chat_cluster(2));
    cc.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let h = Harness::new(cc, Some(2), vec![]);
    h.fleet
        .registered
        .lock()
        .unwrap()
        .insert(format!("{NS}/{NAME}"), vec![server_id(0)]);
    let action = h.reconcile().await;
    assert_eq!(action, Action::await_change());
    assert!(h.registered().is_empty());
    let order: Vec<String> = h
        .calls_matching(|c| {
            c.method == "FLEET" || c.path.ends_with(&format!("/chatclusters/{NAME}"))
        })
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        order,
        [
            format!("FLEET set_registered {NS}/{NAME}"),
            format!("PATCH /apis/chat.scalechat.dev/v1alpha1/namespaces/{NS}/chatclusters/{NAME}"),
        ],
        "deregistered, then the finalizer removed"
    );
    assert_eq!(
        object_patches(&h),
        vec![json!({"metadata": {"resourceVersion": "41", "finalizers": []}})]
    );
    assert!(h.calls("PATCH", "/statefulsets/").is_empty());
}

#[tokio::test]
async fn deleting_with_redis_down_or_the_secret_gone_does_not_hang() {
    // Redis down (the bundled Redis was uninstalled first).
    let mut cc = deleted(chat_cluster(2));
    cc.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let h = Harness::new(cc.clone(), Some(2), vec![]);
    *h.fleet.redis_error.lock().unwrap() = Some("connection refused".into());
    h.reconcile().await;
    assert_eq!(
        object_patches(&h).len(),
        1,
        "the finalizer is removed anyway"
    );
    assert!(h
        .event_reasons()
        .contains(&"DeregistrationFailed".to_owned()));

    // The Secret deleted before the ChatCluster (helm uninstall).
    let h = Harness::new(cc, Some(2), vec![]);
    h.world.lock().unwrap().secrets.clear();
    h.reconcile().await;
    assert_eq!(object_patches(&h).len(), 1);
    assert!(h
        .event_reasons()
        .contains(&"DeregistrationFailed".to_owned()));
}

// ------------- issue 15: no self-triggered reconcile loop; owned objects only

#[tokio::test]
async fn status_writes_do_not_trigger_reconciles_but_spec_changes_do() {
    let h = Harness::new(chat_cluster(1), Some(1), vec![pod(0, true)]);
    h.world.lock().unwrap().live = true;
    *h.fleet.servers.lock().unwrap() = vec![health(0, ServerState::Ready, 5)];
    // The connection count changes on every read, so every status written
    // differs from the one before, as on a cluster with traffic.
    *h.fleet.drifting.lock().unwrap() = true;
    let controller = operator::watches::controller(h.client.clone(), Some(NS));
    let running =
        tokio::spawn(operator::watches::run(controller, h.ctx.clone()).for_each(|_| async {}));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reconciles = h.ctx.metrics.reconciles.get();
    let status_writes = h.calls("PATCH", "/status").len();
    assert_eq!(
        reconciles, 1,
        "the status write ({status_writes} written) woke reconcile again"
    );

    // A spec change (new generation) does wake it.
    {
        let mut w = h.world.lock().unwrap();
        w.cluster.spec.replicas = 2;
        w.cluster.metadata.generation = Some(5);
        w.modified();
        w.deliver_events();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.abort();
    assert_eq!(h.ctx.metrics.reconciles.get(), 2);
    assert_eq!(h.applied_replicas(), Some(2));

    // Only the operator's own StatefulSets are watched.
    let sts_reads =
        h.calls_matching(|c| c.path == format!("/apis/apps/v1/namespaces/{NS}/statefulsets"));
    assert!(!sts_reads.is_empty());
    for call in sts_reads {
        assert!(
            call.query
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dchat-operator"),
            "{}",
            call.query
        );
    }
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let h = Harness::new(chat_cluster(2), Some(2), vec![pod(0, true), pod(1, true)]);
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 5),
        health(1, ServerState::Ready, 7),
    ];
    h.reconcile().await;
    assert_eq!(h.calls("PATCH", "/status").len(), 1);
    h.persist_status();
    h.reconcile().await;
    assert!(h.calls("PATCH", "/status").is_empty());
    assert_eq!(h.ctx.metrics.status_writes.get(), 1);
}

// ------------------------- issue 15: failures are visible on the ChatCluster

#[tokio::test]
async fn a_refused_apply_shows_as_degraded_with_a_warning_event() {
    let mut cc = chat_cluster(2);
    cc.status = Some(ChatClusterStatus {
        replicas: 2,
        ready_replicas: 2,
        label_selector: "app.kubernetes.io/name=chat-server,chat.scalechat.dev/cluster=chat".into(),
        ..ChatClusterStatus::default()
    });
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    h.world.lock().unwrap().refuse_statefulset_apply =
        Some("StatefulSet.apps \"chat\" is invalid: spec.template.spec.containers[0].env[12]: Duplicate value".into());
    let result = h.reconcile_result().await;
    assert!(result.is_err(), "{result:?}");
    let warning = h
        .calls("POST", "/events")
        .into_iter()
        .find(|c| c.body["type"] == "Warning")
        .expect("a Warning event");
    assert_eq!(warning.body["reason"], "KubeError");
    assert!(warning.body["note"]
        .as_str()
        .unwrap()
        .contains("Duplicate value"));
    let status = h.last_status();
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("Duplicate value"));
    assert_eq!(status["replicas"], 2, "the rest of the status is kept");
    assert_eq!(
        status["labelSelector"],
        "app.kubernetes.io/name=chat-server,chat.scalechat.dev/cluster=chat"
    );
}

#[tokio::test]
async fn env_repeating_an_operator_variable_is_an_invalid_spec() {
    let mut cc = chat_cluster(2);
    cc.spec.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "CHAT_SERVER_ID".into(),
        value: Some("mine".into()),
        ..Default::default()
    }];
    let h = Harness::new(cc, Some(2), vec![]);
    h.reconcile().await;
    assert!(h.calls("PATCH", "/statefulsets/").is_empty());
    let degraded = condition(&h.last_status(), "Degraded").clone();
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("CHAT_SERVER_ID"));
}

// ------------------------ issue 15: status follows the StatefulSet's rollout

#[tokio::test]
async fn progressing_stays_true_until_every_pod_runs_the_new_revision() {
    let h = Harness::new(chat_cluster(2), Some(2), vec![pod(0, true), pod(1, true)]);
    // An image change: one pod updated, the old one still running.
    h.world.lock().unwrap().statefulset_status = Some(json!({
        "observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 1,
        "currentRevision": "chat-1", "updateRevision": "chat-2"}));
    h.reconcile().await;
    let status = h.last_status();
    let progressing = condition(&status, "Progressing");
    assert_eq!(progressing["status"], "True", "{status}");
    assert_eq!(progressing["reason"], "RollingOut");
    assert!(progressing["message"]
        .as_str()
        .unwrap()
        .contains("1/2 pods run the latest revision"));
    h.persist_status();

    // Done: every pod on the new revision.
    h.world.lock().unwrap().statefulset_status = Some(json!({
        "observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
        "currentRevision": "chat-2", "updateRevision": "chat-2"}));
    h.reconcile().await;
    assert_eq!(
        condition(&h.last_status(), "Progressing")["status"],
        "False"
    );
}

#[tokio::test]
async fn terminating_pods_are_neither_ready_nor_registered() {
    let mut leaving = pod(1, true);
    leaving["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
    let h = Harness::new(chat_cluster(2), Some(2), vec![pod(0, true), leaving]);
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 5),
        health(1, ServerState::Ready, 5),
    ];
    h.reconcile().await;
    let status = h.last_status();
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(status["endpoints"][1]["state"], "terminating");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(h.registered(), vec![server_id(0)]);
}

// -------------------------------------------- issue 15: drain edge cases

#[tokio::test]
async fn a_leaving_pod_without_an_ip_is_asked_to_drain_once_it_has_one() {
    let h = scaling_three_pods_to_two();
    h.world.lock().unwrap().pods[2]["status"]
        .as_object_mut()
        .unwrap()
        .remove("podIP");
    h.reconcile().await;
    assert!(h.fleet.drains.lock().unwrap().is_empty());
    assert_eq!(h.applied_replicas(), Some(3), "not removed undrained");
    h.persist_status();

    h.world.lock().unwrap().pods[2]["status"]["podIP"] = json!("10.0.0.12");
    *h.now.lock().unwrap() += 2;
    h.reconcile().await;
    assert_eq!(*h.fleet.drains.lock().unwrap(), vec!["10.0.0.12:9001"]);
    assert_eq!(
        h.last_status()["draining"],
        json!([{"pod": "chat-2", "since": 1_000_000, "uid": "uid-chat-2"}]),
        "the timeout runs from the first attempt"
    );
}

/// chat-2 was drained for a scale-down to 2; the count went back to 3.
fn scaled_back_up_during_a_drain(uid: Option<&str>) -> Harness {
    let mut cc = chat_cluster(3);
    cc.status = Some(ChatClusterStatus {
        draining: vec![DrainStatus {
            pod: "chat-2".into(),
            since: 999_990,
            uid: uid.map(str::to_owned),
        }],
        ..ChatClusterStatus::default()
    });
    Harness::new(cc, Some(3), vec![pod(0, true), pod(1, true), pod(2, true)])
}

#[tokio::test]
async fn recycling_deletes_exactly_the_drained_pod_and_a_gone_pod_is_done() {
    let h = scaled_back_up_during_a_drain(Some("uid-chat-2"));
    h.reconcile().await;
    let deletes = h.calls("DELETE", "/pods/chat-2");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].body["preconditions"]["uid"], "uid-chat-2");
    assert!(h.event_reasons().contains(&"Recycled".to_owned()));

    // The same reconcile again (say its status write was lost) after the
    // pod was replaced: 404 or a UID mismatch is done, not an error.
    let h = scaled_back_up_during_a_drain(Some("uid-chat-2"));
    h.world.lock().unwrap().pod_delete_status = StatusCode::NOT_FOUND;
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(3));
    let h = scaled_back_up_during_a_drain(Some("uid-chat-2"));
    h.world.lock().unwrap().pod_delete_status = StatusCode::CONFLICT;
    h.reconcile().await;
    assert!(!h.event_reasons().contains(&"Recycled".to_owned()));

    // A record without a UID (older operator) recycles only a pod that is
    // still draining, never a fresh one.
    let h = scaled_back_up_during_a_drain(None);
    *h.fleet.servers.lock().unwrap() = vec![health(2, ServerState::Ready, 0)];
    h.reconcile().await;
    assert!(h.calls("DELETE", "/pods/").is_empty());
}

// ------------------ issue 15: who owns spec.replicas when autoscaling is on

fn autoscaled(replicas: i32) -> ChatCluster {
    let mut cc = chat_cluster(replicas);
    cc.spec.autoscaling = Some(AutoscalingSpec {
        enabled: true,
        min_replicas: 2,
        max_replicas: 8,
        target_connections_per_pod: 1000,
        scale_down_stabilization_seconds: 300,
    });
    cc
}

fn busy(h: &Harness) {
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 2600),
        health(1, ServerState::Ready, 2400),
    ];
}

#[tokio::test]
async fn autoscaling_writes_its_decision_into_spec_replicas() {
    // spec.replicas 3 was set by hand (kubectl scale); load asks for 5.
    let h = Harness::new(autoscaled(3), Some(3), vec![pod(0, true), pod(1, true)]);
    busy(&h);
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(5));
    let patch = h
        .calls_matching(|c| {
            c.method == "PATCH" && c.path.ends_with(&format!("/chatclusters/{NAME}"))
        })
        .pop()
        .expect("spec.replicas written");
    assert_eq!(patch.body, json!({"spec": {"replicas": 5}}));
    assert!(
        patch.query.contains("fieldManager=chat-operator"),
        "{}",
        patch.query
    );
    assert!(h.event_reasons().contains(&"Autoscaled".to_owned()));
}

#[tokio::test]
async fn an_hpa_on_the_cluster_pauses_the_operators_autoscaling() {
    let h = Harness::new(autoscaled(3), Some(3), vec![pod(0, true), pod(1, true)]);
    busy(&h);
    h.world.lock().unwrap().hpas = vec![json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "chat-servers", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "chat.scalechat.dev/v1alpha1",
                                    "kind": "ChatCluster", "name": NAME},
                 "maxReplicas": 20}})];
    h.reconcile().await;
    assert_eq!(
        h.applied_replicas(),
        Some(3),
        "the HPA's spec.replicas holds"
    );
    assert!(
        object_patches(&h).is_empty(),
        "spec.replicas left to the HPA"
    );
    let status = h.last_status();
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["reason"], "ConflictingAutoscaler");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("chat-servers"));
}

// ------------------------------- issue 15: restarts and conflicts (coverage)

#[tokio::test]
async fn an_operator_restarted_mid_drain_carries_on_from_the_recorded_status() {
    let first = scaling_three_pods_to_two();
    first.reconcile().await;
    let recorded: ChatClusterStatus = serde_json::from_value(first.last_status()).unwrap();
    drop(first);

    // A new operator process: nothing in memory, only the status.
    let mut cc = chat_cluster(2);
    cc.status = Some(recorded);
    let h = Harness::new(cc, Some(3), vec![pod(0, true), pod(1, true), pod(2, true)]);
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 5),
        health(1, ServerState::Ready, 5),
        health(2, ServerState::Draining, 2),
    ];
    *h.now.lock().unwrap() += 5;
    h.reconcile().await;
    assert!(
        h.fleet.drains.lock().unwrap().is_empty(),
        "already draining"
    );
    assert!(!h.event_reasons().contains(&"DrainStarted".to_owned()));
    assert_eq!(h.applied_replicas(), Some(3));
    assert_eq!(h.last_status()["draining"][0]["since"], 1_000_000);
    h.persist_status();
    // The timeout counts from the first operator's start.
    *h.now.lock().unwrap() += 25;
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(2));
}

#[tokio::test]
async fn a_conflict_removing_the_legacy_finalizer_is_retried() {
    let mut cc = chat_cluster(2);
    cc.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let h = Harness::new(cc, Some(2), vec![]);
    h.world.lock().unwrap().conflict_on_next_object_patch = true;
    let error = h.reconcile_result().await.unwrap_err();
    assert!(error.to_string().contains("modified"), "{error}");
    assert!(h.calls("PATCH", "/statefulsets/").is_empty());
    // The controller retries (with back-off) and the next attempt succeeds.
    h.reconcile().await;
    assert_eq!(object_patches(&h).len(), 2);
    assert_eq!(h.applied_replicas(), Some(2));
}

// ------------------- spec.expose: reaching the pods from outside the cluster

fn gateway_expose() -> ExposeSpec {
    ExposeSpec {
        mode: ExposeMode::GatewayApi,
        host: "chat.example.com".into(),
        tls: true,
        gateway: Some(GatewayExpose {
            parent_refs: vec![HttpRouteParentRefs {
                name: "public".into(),
                namespace: Some("gateways".into()),
                section_name: Some("https".into()),
                ..HttpRouteParentRefs::default()
            }],
        }),
        ingress: None,
        annotations: BTreeMap::new(),
        service_annotations: BTreeMap::new(),
    }
}

fn ingress_expose() -> ExposeSpec {
    ExposeSpec {
        mode: ExposeMode::Ingress,
        host: "chat.example.com".into(),
        tls: true,
        gateway: None,
        ingress: Some(IngressExpose {
            ingress_class_name: Some("nginx".into()),
            tls_secret_name: Some("chat-pods-tls".into()),
        }),
        annotations: BTreeMap::from([(
            "nginx.ingress.kubernetes.io/proxy-read-timeout".into(),
            "3600".into(),
        )]),
        service_annotations: BTreeMap::new(),
    }
}

impl Harness {
    /// Names of the stored objects of a resource (`services`, ...).
    fn stored(&self, resource: &str) -> Vec<String> {
        let world = self.world.lock().unwrap();
        world
            .stored
            .get(resource)
            .map(|objects| objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn stored_object(&self, resource: &str, name: &str) -> Value {
        self.world.lock().unwrap().stored[resource][name].clone()
    }

    fn public_url(&self) -> Value {
        let sts = self
            .calls("PATCH", "/statefulsets/")
            .last()
            .unwrap()
            .body
            .clone();
        sts["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "CHAT_PUBLIC_URL")
            .unwrap()["value"]
            .clone()
    }
}

#[tokio::test]
async fn scale_up_creates_the_service_and_route_of_the_new_pod() {
    let mut cc = chat_cluster(3);
    cc.spec.expose = Some(gateway_expose());
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(3));
    assert_eq!(
        h.stored("httproutes"),
        ["chat-0-ws", "chat-1-ws", "chat-2-ws"]
    );
    assert_eq!(
        h.stored("services"),
        ["chat-0-ws", "chat-1-ws", "chat-2-ws", "chat-chat"]
    );

    let service = h.stored_object("services", "chat-2-ws");
    assert_eq!(
        service["spec"]["selector"],
        json!({"statefulset.kubernetes.io/pod-name": "chat-2"})
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 9001);
    assert_eq!(
        service["metadata"]["labels"]["chat.scalechat.dev/pod"],
        "chat-2"
    );
    assert_eq!(
        service["metadata"]["ownerReferences"][0]["kind"],
        "ChatCluster"
    );

    let route = h.stored_object("httproutes", "chat-2-ws");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["kind"], "HTTPRoute");
    assert_eq!(
        route["spec"]["parentRefs"],
        json!([{"name": "public", "namespace": "gateways", "sectionName": "https"}])
    );
    assert_eq!(route["spec"]["hostnames"], json!(["chat.example.com"]));
    let rule = &route["spec"]["rules"][0];
    assert_eq!(
        rule["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/chat-2/ws"}}])
    );
    assert_eq!(
        rule["filters"],
        json!([{"type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/ws"}}}])
    );
    assert_eq!(
        rule["backendRefs"],
        json!([{"name": "chat-2-ws", "port": 9001}])
    );
    assert_eq!(
        route["metadata"]["ownerReferences"][0]["uid"],
        "7b6f1c1e-0000-4000-8000-000000000001"
    );
    for call in h.calls_matching(|c| {
        c.method == "PATCH" && (c.path.contains("/httproutes/") || c.path.contains("-ws"))
    }) {
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        assert!(
            call.query.contains("fieldManager=chat-operator") && call.query.contains("force=true"),
            "{}",
            call.query
        );
    }
    // The URL the chat servers report is the one the routes serve.
    assert_eq!(h.public_url(), "wss://chat.example.com/$(POD_NAME)/ws");
    assert_eq!(condition(&h.last_status(), "Degraded")["status"], "False");
}

#[tokio::test]
async fn scale_down_removes_the_leaving_pods_route_only_after_its_drain() {
    let h = scaling_three_pods_to_two();
    h.world.lock().unwrap().cluster.spec.expose = Some(gateway_expose());
    // 1. chat-2 is asked to drain: its clients are still connected through
    // its route, which stays.
    h.reconcile().await;
    assert_eq!(*h.fleet.drains.lock().unwrap(), vec!["10.0.0.12:9001"]);
    assert_eq!(
        h.stored("httproutes"),
        ["chat-0-ws", "chat-1-ws", "chat-2-ws"]
    );
    assert!(h.calls("DELETE", "").is_empty());
    h.persist_status();

    // 2. Still draining.
    h.fleet.servers.lock().unwrap()[2] = health(2, ServerState::Draining, 1);
    *h.now.lock().unwrap() += 3;
    h.reconcile().await;
    assert!(h.calls("DELETE", "").is_empty());
    h.persist_status();

    // 3. Drained: the StatefulSet shrinks, and chat-2's Service and route go.
    h.fleet.servers.lock().unwrap()[2] = health(2, ServerState::Draining, 0);
    *h.now.lock().unwrap() += 3;
    h.reconcile().await;
    assert_eq!(h.applied_replicas(), Some(2));
    let deleted: Vec<String> = h
        .calls("DELETE", "")
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(
        deleted,
        [
            format!("/api/v1/namespaces/{NS}/services/chat-2-ws"),
            format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/chat-2-ws"),
        ]
    );
    assert_eq!(h.stored("httproutes"), ["chat-0-ws", "chat-1-ws"]);
    assert_eq!(
        h.stored("services"),
        ["chat-0-ws", "chat-1-ws", "chat-chat"],
        "the headless Service is not the operator's exposure object"
    );
}

#[tokio::test]
async fn switching_to_ingress_and_turning_expose_off_prune_what_is_no_longer_asked_for() {
    let mut cc = chat_cluster(2);
    cc.spec.expose = Some(gateway_expose());
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    h.reconcile().await;
    assert_eq!(h.stored("httproutes"), ["chat-0-ws", "chat-1-ws"]);

    // Ingress: one Ingress, a host per pod; the routes go.
    h.world.lock().unwrap().cluster.spec.expose = Some(ingress_expose());
    h.reconcile().await;
    assert!(h.stored("httproutes").is_empty());
    assert_eq!(h.stored("ingresses"), ["chat-ws"]);
    let ingress = h.stored_object("ingresses", "chat-ws");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ingress["spec"]["tls"],
        json!([{"hosts": ["chat-0.chat.example.com", "chat-1.chat.example.com"],
                "secretName": "chat-pods-tls"}])
    );
    assert_eq!(
        ingress["spec"]["rules"][1],
        json!({"host": "chat-1.chat.example.com",
               "http": {"paths": [{"path": "/ws", "pathType": "Prefix",
                                   "backend": {"service": {"name": "chat-1-ws", "port": {"number": 9001}}}}]}})
    );
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    assert_eq!(h.public_url(), "wss://$(POD_NAME).chat.example.com/ws");

    // An explicit template still wins.
    h.world.lock().unwrap().cluster.spec.public_url_template =
        Some("wss://edge.example.com/{pod}".into());
    h.reconcile().await;
    assert_eq!(h.public_url(), "wss://edge.example.com/$(POD_NAME)");

    // Off: everything the operator made for it is deleted; the clients'
    // URL is the in-cluster one again.
    {
        let mut w = h.world.lock().unwrap();
        w.cluster.spec.expose = None;
        w.cluster.spec.public_url_template = None;
    }
    h.reconcile().await;
    assert!(h.stored("ingresses").is_empty());
    assert_eq!(h.stored("services"), ["chat-chat"]);
    assert_eq!(
        h.public_url(),
        "ws://$(POD_NAME).chat-chat.prod.svc.cluster.local:9001/ws"
    );

    // Off on a cluster without the Gateway API CRDs: nothing to prune, no
    // error (the HTTPRoute list answers 404).
    h.world.lock().unwrap().no_gateway_api = true;
    h.reconcile().await;
    assert_eq!(condition(&h.last_status(), "Degraded")["status"], "False");
}

#[tokio::test]
async fn missing_gateway_api_crds_show_as_degraded_and_the_pods_still_run() {
    let mut cc = chat_cluster(2);
    cc.spec.expose = Some(gateway_expose());
    let h = Harness::new(cc, Some(2), vec![pod(0, true), pod(1, true)]);
    *h.fleet.servers.lock().unwrap() = vec![
        health(0, ServerState::Ready, 1),
        health(1, ServerState::Ready, 1),
    ];
    h.world.lock().unwrap().no_gateway_api = true;
    let action = h.reconcile().await;
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    assert_eq!(h.applied_replicas(), Some(2));
    let degraded = condition(&h.last_status(), "Degraded").clone();
    assert_eq!(degraded["reason"], "ExposeFailed");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("HTTPRoute chat-0-ws") && message.contains("Gateway API CRDs"),
        "{message}"
    );
    assert!(h.event_reasons().contains(&"ExposeFailed".to_owned()));
}

#[tokio::test]
async fn gateway_mode_without_parent_refs_is_an_invalid_spec() {
    let mut cc = chat_cluster(2);
    let mut expose = gateway_expose();
    expose.gateway = None;
    cc.spec.expose = Some(expose);
    let h = Harness::new(cc, Some(2), vec![]);
    h.reconcile().await;
    assert!(h.calls("PATCH", "/statefulsets/").is_empty());
    let degraded = condition(&h.last_status(), "Degraded").clone();
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"].as_str().unwrap().contains("parentRefs"));
}

/// The real-cluster path. Needs kind (or k3d), Docker and Helm, none of
/// which can run on our CI machines.
#[test]
#[ignore = "needs a Kubernetes cluster (kind or k3d), Docker and Helm: run scripts/kind-e2e.sh"]
fn installs_scales_and_serves_on_a_real_cluster() {
    let status = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/kind-e2e.sh"
        ))
        .status()
        .expect("running scripts/kind-e2e.sh");
    assert!(status.success());
}

//! Reconcile: level-based and idempotent. Read the world (the ChatCluster,
//! its StatefulSet and pods, the chat servers' health), decide (replicas
//! from the spec or from load, the drain-before-shrink plan), apply the
//! owned objects with server-side apply, register the ready endpoints,
//! write status, and requeue. Deletion needs no step of its own (see
//! [`reconcile`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_ops::{Counter, Metrics};
use chat_store::ServerHealth;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::autoscale;
use crate::crd::{
    ChatCluster, ChatClusterSpec, ChatClusterStatus, Condition, EndpointStatus, FIELD_MANAGER,
    LEGACY_FINALIZER,
};
use crate::expose;
use crate::fleet::{FleetConfig, FleetConnector, FleetError};
use crate::resources;
use crate::scaledown::{self, PodLoad, ScalePlan};

/// One error type; its variant name is the `reason` of error events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("chat servers: {0}")]
    Fleet(#[from] FleetError),
    #[error("ChatCluster has no namespace")]
    MissingNamespace,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
            Error::Fleet(_) => "FleetError",
            Error::MissingNamespace => "MissingNamespace",
        }
    }
}

pub struct ControllerMetrics {
    pub reconciles: Arc<Counter>,
    pub reconcile_errors: Arc<Counter>,
    pub drains_requested: Arc<Counter>,
    pub scale_ups: Arc<Counter>,
    pub scale_downs: Arc<Counter>,
    pub status_writes: Arc<Counter>,
    pub drain_timeouts: Arc<Counter>,
}

impl ControllerMetrics {
    pub fn new(m: &Metrics) -> Self {
        ControllerMetrics {
            reconciles: m.counter(
                "operator_reconciles_total",
                "Reconciliations run (its rate shows a reconcile loop, if any).",
            ),
            reconcile_errors: m.counter(
                "operator_reconcile_errors_total",
                "Reconciliations that failed.",
            ),
            drains_requested: m.counter(
                "operator_drains_requested_total",
                "Chat server pods asked to drain.",
            ),
            scale_ups: m.counter("operator_scale_ups_total", "StatefulSet replica increases."),
            scale_downs: m.counter(
                "operator_scale_downs_total",
                "StatefulSet replica decreases after a drain.",
            ),
            status_writes: m.counter(
                "operator_status_writes_total",
                "ChatCluster status writes (an unchanged status is not written).",
            ),
            drain_timeouts: m.counter(
                "operator_drain_timeouts_total",
                "Chat server pods removed by a scale-down while still holding clients: their drain ran out of time.",
            ),
        }
    }
}

pub struct Context {
    pub client: Client,
    /// Each ChatCluster's fleet, from its own spec and Secrets.
    pub fleets: Arc<dyn FleetConnector>,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// Seconds since the epoch; fixed in tests.
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Consecutive failures per object, for exponential back-off.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        fleets: Arc<dyn FleetConnector>,
        metrics: &Metrics,
        reporter: &str,
    ) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(reporter.into()),
            },
        );
        Arc::new(Context {
            client,
            fleets,
            recorder,
            metrics: ControllerMetrics::new(metrics),
            clock: Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            }),
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    async fn event(
        &self,
        cc: &ChatCluster,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &cc.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// The controller's entry point for one ChatCluster.
///
/// No finalizer: one would hold a deleted ChatCluster `Terminating` until
/// the operator has cleaned up, and `helm uninstall` or deleting the
/// namespace removes the operator (and often its Redis) first, so it would
/// hold forever. A deleted cluster's pods go with their StatefulSet and
/// their health records expire within seconds, after which the API places
/// no clients on them whether or not they are still registered. Clusters
/// created by an earlier operator still carry its finalizer
/// ([`LEGACY_FINALIZER`]); it is removed here, after a bounded,
/// best-effort deregistration when the cluster is being deleted.
pub async fn reconcile(cc: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let ns = cc.namespace().ok_or(Error::MissingNamespace)?;
    let key = format!("{ns}/{}", cc.name_any());
    let result = if cc.metadata.deletion_timestamp.is_some() {
        if cc.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
            deregister(&cc, &ctx).await;
            remove_legacy_finalizer(&cc, &ctx)
                .await
                .map(|()| Action::await_change())
        } else {
            Ok(Action::await_change())
        }
    } else {
        if cc.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
            remove_legacy_finalizer(&cc, &ctx).await?;
        }
        match apply(cc.clone(), ctx.clone()).await {
            Ok(action) => Ok(action),
            Err(error) => {
                report_failure(&cc, &ctx, &error).await;
                Err(error)
            }
        }
    };
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    result
}

/// A reconcile that failed (the API server refused an apply, say) shows on
/// the object, not only in the operator's log: a Warning event, and
/// `Degraded` with the error in the status, the rest of which is kept. Best
/// effort: the API server may be what failed.
async fn report_failure(cc: &ChatCluster, ctx: &Context, error: &Error) {
    ctx.event(
        cc,
        EventType::Warning,
        error.reason(),
        "Reconcile",
        error.to_string(),
    )
    .await;
    let previous = cc.status.clone().unwrap_or_default();
    let now = rfc3339(ctx.now());
    let degraded = condition(
        "Degraded",
        true,
        error.reason(),
        error.to_string(),
        &previous.conditions,
        &now,
    );
    let status = with_conditions(&previous, vec![degraded]);
    let api: Api<ChatCluster> =
        Api::namespaced(ctx.client.clone(), &cc.namespace().unwrap_or_default());
    if let Err(e) = write_status(&api, &cc.name_any(), &status).await {
        tracing::warn!(error = %e, "could not write the Degraded condition");
    }
}

/// `previous` with these conditions replacing those of the same type.
fn with_conditions(previous: &ChatClusterStatus, conditions: Vec<Condition>) -> ChatClusterStatus {
    let mut status = previous.clone();
    for new in conditions {
        match status.conditions.iter_mut().find(|c| c.type_ == new.type_) {
            Some(old) => *old = new,
            None => status.conditions.push(new),
        }
    }
    status
}

/// Longest time a deleted cluster's deregistration may take before its
/// finalizer is removed anyway.
pub const DEREGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Best effort, bounded: removes a deleted cluster's registrations from its
/// Redis, and says so in an event either way.
async fn deregister(cc: &ChatCluster, ctx: &Context) {
    let cluster = format!("{}/{}", cc.namespace().unwrap_or_default(), cc.name_any());
    let attempt = async {
        let fleet = ctx
            .fleets
            .connect(&fleet_config(cc, &ctx.client).await?)
            .await?;
        fleet.set_registered(&cluster, &[]).await
    };
    match tokio::time::timeout(DEREGISTRATION_TIMEOUT, attempt).await {
        Ok(Ok(())) => {
            ctx.event(
                cc,
                EventType::Normal,
                "Deregistered",
                "Cleanup",
                "removed this cluster's chat server registrations".into(),
            )
            .await
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {}s", DEREGISTRATION_TIMEOUT.as_secs()),
            };
            ctx.event(
                cc,
                EventType::Warning,
                "DeregistrationFailed",
                "Cleanup",
                format!("{why}; deleting anyway (the pods go with the StatefulSet, and the API stops placing clients on them once their health records expire)"),
            )
            .await
        }
    }
}

/// Drops [`LEGACY_FINALIZER`], leaving any other finalizer alone. The
/// resourceVersion makes it fail (and retry) if the list changed meanwhile.
async fn remove_legacy_finalizer(cc: &ChatCluster, ctx: &Context) -> Result<(), Error> {
    let api: Api<ChatCluster> =
        Api::namespaced(ctx.client.clone(), &cc.namespace().unwrap_or_default());
    let remaining: Vec<&String> = cc
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = json!({
        "metadata": {
            "resourceVersion": cc.resource_version(),
            "finalizers": remaining,
        }
    });
    api.patch(
        &cc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Exponential back-off per object: 5 s, 10 s, 20 s ... at most 5 min.
pub fn error_policy(cc: Arc<ChatCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    let key = format!("{}/{}", cc.namespace().unwrap_or_default(), cc.name_any());
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff(*n);
    tracing::warn!(reason = error.reason(), %error, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

/// Checks what the schema cannot always enforce (CEL rules need a recent
/// API server); an invalid spec gives a Degraded condition, not a crash loop.
pub fn validate(spec: &ChatClusterSpec) -> Result<(), String> {
    if spec.replicas < 0 {
        return Err("replicas must be >= 0".into());
    }
    if !(1..=65535).contains(&spec.port) {
        return Err(format!("port {} is out of range 1..65535", spec.port));
    }
    if spec.image.trim().is_empty() {
        return Err("image must be set".into());
    }
    if spec.secret_name.trim().is_empty() {
        return Err("secretName must be set".into());
    }
    if spec.drain_timeout_seconds < 0 {
        return Err("drainTimeoutSeconds must be >= 0".into());
    }
    if let Some(e) = spec
        .env
        .iter()
        .find(|e| resources::OPERATOR_ENV.contains(&e.name.as_str()))
    {
        return Err(format!(
            "env must not set {}: the operator sets it (two entries of one name make the StatefulSet invalid)",
            e.name
        ));
    }
    if spec.redis.urls.is_some() == spec.redis.secret_key_ref.is_some() {
        return Err("give exactly one of redis.urls or redis.secretKeyRef".into());
    }
    if spec.redis.urls.as_ref().is_some_and(|u| u.is_empty()) {
        return Err("redis.urls must not be empty".into());
    }
    if let Some(expose) = &spec.expose {
        expose::validate(expose)?;
    }
    if let Some(a) = spec.autoscaling.as_ref().filter(|a| a.enabled) {
        if a.min_replicas < 0 || a.max_replicas < 1 {
            return Err("autoscaling needs minReplicas >= 0 and maxReplicas >= 1".into());
        }
        if a.min_replicas > a.max_replicas {
            return Err(format!(
                "autoscaling.minReplicas ({}) must be <= autoscaling.maxReplicas ({})",
                a.min_replicas, a.max_replicas
            ));
        }
        if a.target_connections_per_pod < 1 {
            return Err("autoscaling.targetConnectionsPerPod must be >= 1".into());
        }
    }
    Ok(())
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    previous: &[Condition],
    now: &str,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
    }
}

fn rfc3339(now_s: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(now_s)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Writes the whole status with server-side apply. Always the whole: a
/// field this manager applied before and leaves out now is removed.
async fn write_status(
    api: &Api<ChatCluster>,
    name: &str,
    status: &ChatClusterStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "chat.scalechat.dev/v1alpha1",
        "kind": "ChatCluster",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The HorizontalPodAutoscaler in the cluster's namespace that targets it,
/// if any. Without permission to list them (an older chart's Role), none.
async fn hpa_targeting(cc: &ChatCluster, client: &Client) -> Result<Option<String>, Error> {
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), &cc.namespace().unwrap_or_default());
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(list
        .items
        .into_iter()
        .find(|h| {
            let target = &h.spec.scale_target_ref;
            target.kind == "ChatCluster"
                && target.name == cc.name_any()
                && target
                    .api_version
                    .as_deref()
                    .is_some_and(|v| v.starts_with(&format!("{}/", crate::crd::API_GROUP)))
        })
        .map(|h| h.name_any()))
}

/// Reads what this cluster's fleet is reached with: `spec.redis` (inline or
/// from a Secret key, comma-separated) and `internalSecret` of
/// `spec.secretName`. Both Secrets are in the ChatCluster's namespace.
pub async fn fleet_config(cc: &ChatCluster, client: &Client) -> Result<FleetConfig, FleetError> {
    let ns = cc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let read = |name: String, key: String| {
        let secrets = secrets.clone();
        async move {
            let secret = secrets
                .get_opt(&name)
                .await
                .map_err(|e| FleetError(format!("reading Secret {name}: {e}")))?
                .ok_or_else(|| FleetError(format!("Secret {name} not found")))?;
            let value = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(&key))
                        .map(|v| v.trim().to_owned())
                })
                .filter(|v| !v.is_empty())
                .ok_or_else(|| FleetError(format!("Secret {name} has no key {key}")))?;
            Ok::<String, FleetError>(value)
        }
    };
    let redis_urls = match (&cc.spec.redis.urls, &cc.spec.redis.secret_key_ref) {
        (Some(urls), _) => urls.clone(),
        (None, Some(r)) => read(r.name.clone(), r.key.clone())
            .await?
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect(),
        (None, None) => Vec::new(),
    };
    let internal_secret = read(cc.spec.secret_name.clone(), "internalSecret".into()).await?;
    let tls = cc.spec.redis.tls.as_ref();
    let redis_ca_pem = match tls.and_then(|t| t.ca_secret_key_ref.as_ref()) {
        Some(r) => Some(read(r.name.clone(), r.key.clone()).await?.into_bytes()),
        None => None,
    };
    let redis_client_cert = match tls.and_then(|t| t.client_cert_secret_name.as_ref()) {
        Some(name) => Some((
            read(name.clone(), "tls.crt".into()).await?.into_bytes(),
            read(name.clone(), "tls.key".into()).await?.into_bytes(),
        )),
        None => None,
    };
    Ok(FleetConfig {
        redis_urls,
        internal_secret,
        redis_ca_pem,
        redis_client_cert,
    })
}

/// Ready and not terminating: a pod with a deletionTimestamp is on its
/// way out (it may still pass its probe while it drains) and must be
/// neither counted nor registered.
fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where the StatefulSet's rollout stands, from its own status: `None`
/// once its controller has seen the latest spec and every pod runs the
/// latest revision, else what is still going on.
pub fn rollout_pending(sts: &StatefulSet) -> Option<String> {
    let Some(status) = sts.status.as_ref() else {
        return Some("the StatefulSet controller has not reported yet".into());
    };
    let generation = sts.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Some("the StatefulSet controller has not seen the latest spec yet".into());
    }
    let want = sts.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let revision_done = match (&status.current_revision, &status.update_revision) {
        (Some(current), Some(update)) => current == update,
        _ => true,
    };
    if updated < want || !revision_done {
        return Some(format!("{updated}/{want} pods run the latest revision"));
    }
    None
}

/// A failure that does not stop the reconcile (Redis down, a Secret
/// missing, a drain refused): the owned objects are still applied, and it
/// shows as the `Degraded` condition and a Warning event.
struct Problem {
    reason: &'static str,
    message: String,
}

impl Problem {
    fn new(reason: &'static str, error: impl std::fmt::Display) -> Problem {
        Problem {
            reason,
            message: error.to_string(),
        }
    }
}

/// The `Degraded` condition: true with the first problem's reason.
fn degraded(problems: &[Problem], previous: &[Condition], now: &str) -> Condition {
    match problems.first() {
        None => condition(
            "Degraded",
            false,
            "AsExpected",
            "chat servers reachable".into(),
            previous,
            now,
        ),
        Some(first) => condition(
            "Degraded",
            true,
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            previous,
            now,
        ),
    }
}

/// The status after an invalid spec: everything else is kept as it was (a
/// server-side apply that left fields out would remove them: `replicas`
/// and `labelSelector` an HPA reads, `draining` a scale-down depends on).
fn invalid_spec_status(
    cc: &ChatCluster,
    previous: &ChatClusterStatus,
    message: &str,
    now: &str,
) -> ChatClusterStatus {
    let mut status = with_conditions(
        previous,
        ["Ready", "Degraded"]
            .into_iter()
            .map(|type_| {
                let is_degraded = type_ == "Degraded";
                condition(
                    type_,
                    is_degraded,
                    "InvalidSpec",
                    message.into(),
                    &previous.conditions,
                    now,
                )
            })
            .collect(),
    );
    status.observed_generation = cc.metadata.generation;
    status
}

async fn apply(cc: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cc.namespace().ok_or(Error::MissingNamespace)?;
    let name = cc.name_any();
    let client = ctx.client.clone();
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
    let now = ctx.now();
    let now_text = rfc3339(now);
    let previous = cc.status.clone().unwrap_or_default();

    if let Err(message) = validate(&cc.spec) {
        write_status(
            &api,
            &name,
            &invalid_spec_status(&cc, &previous, &message, &now_text),
        )
        .await?;
        ctx.event(&cc, EventType::Warning, "InvalidSpec", "Validate", message)
            .await;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let current = statefulsets
        .get_opt(&name)
        .await?
        .and_then(|s| s.spec.replicas);
    let pods = pods_api
        .list(&ListParams::default().labels(&resources::selector_string(&cc)))
        .await?;

    // The chat servers' side. Any failure here leaves health unknown, which
    // is not the same as no load: nothing is scaled or drained on it.
    let mut problems: Vec<Problem> = Vec::new();
    let fleet = match fleet_config(&cc, &client).await {
        Ok(config) => match ctx.fleets.connect(&config).await {
            Ok(fleet) => Some(fleet),
            Err(e) => {
                problems.push(Problem::new("RedisUnavailable", e));
                None
            }
        },
        Err(e) => {
            problems.push(Problem::new("SecretUnavailable", e));
            None
        }
    };
    let health: Option<HashMap<String, ServerHealth>> = match &fleet {
        Some(fleet) => match fleet.servers().await {
            Ok(list) => Some(list.into_iter().map(|h| (h.id.clone(), h)).collect()),
            Err(e) => {
                problems.push(Problem::new("RedisUnavailable", e));
                None
            }
        },
        None => None,
    };
    let health_of = |pod: &str| {
        health
            .as_ref()
            .and_then(|h| h.get(&resources::server_id(&cc, pod)))
    };
    let loads: BTreeMap<String, PodLoad> = pods
        .items
        .iter()
        .filter_map(|p| {
            let pod = p.name_any();
            let h = health_of(&pod)?;
            Some((
                pod,
                PodLoad {
                    reporting: true,
                    draining: h.state == chat_store::ServerState::Draining,
                    connections: h.connections as i64,
                },
            ))
        })
        .collect();
    let connections: i64 = match health {
        Some(_) => loads.values().map(|l| l.connections).sum(),
        None => previous.connections,
    };

    // Desired replicas: by hand (spec, scale subresource, HPA) or from load.
    let mut autoscaling = cc.spec.autoscaling.as_ref().filter(|a| a.enabled);
    if autoscaling.is_some() {
        if let Some(hpa) = hpa_targeting(&cc, &client).await? {
            // Two autoscalers writing one spec.replicas would fight: the
            // HPA's writes win and the operator's autoscaling pauses.
            problems.push(Problem::new(
                "ConflictingAutoscaler",
                format!("HorizontalPodAutoscaler {hpa} scales this ChatCluster; spec.autoscaling is ignored while it exists (turn one of them off)"),
            ));
            autoscaling = None;
        }
    }
    let (desired, recommendations, plan) = if health.is_some() {
        let (desired, recommendations) = match autoscaling {
            Some(auto) => {
                let recommendation = autoscale::recommend(connections, auto);
                autoscale::stabilize(&previous.recommendations, recommendation, now, auto)
            }
            None => (cc.spec.replicas, Vec::new()),
        };
        let plan = scaledown::plan(
            &name,
            current,
            desired,
            &loads,
            &previous.draining,
            now,
            i64::from(cc.spec.drain_timeout_seconds),
        );
        (desired, recommendations, plan)
    } else {
        // Health unknown: hold the StatefulSet where it is (or create it at
        // the spec's count), start no drain and keep the records as they are.
        let initial = match autoscaling {
            Some(a) => cc.spec.replicas.clamp(a.min_replicas, a.max_replicas),
            None => cc.spec.replicas,
        };
        let hold = current.unwrap_or(initial);
        let desired = if autoscaling.is_some() {
            hold
        } else {
            cc.spec.replicas
        };
        let plan = ScalePlan {
            statefulset_replicas: hold,
            start_draining: Vec::new(),
            draining: previous.draining.clone(),
            recycle: Vec::new(),
            waiting: false,
            cut_short: Vec::new(),
        };
        (desired, previous.recommendations.clone(), plan)
    };

    // Drain records carry the UID of the pod they are about.
    let mut plan = plan;
    for record in plan.draining.iter_mut().filter(|d| d.uid.is_none()) {
        record.uid = pods
            .items
            .iter()
            .find(|p| p.name_any() == record.pod)
            .and_then(|p| p.metadata.uid.clone());
    }

    for pod in &plan.recycle {
        // Exactly the drained pod: by the UID recorded when it was asked to
        // drain, or (a record from before UIDs were kept) the current pod if
        // it is still draining. A pod already replaced is left alone, so a
        // repeated reconcile never deletes the fresh one.
        let record = previous.draining.iter().find(|d| &d.pod == pod);
        let current = pods.items.iter().find(|p| &p.name_any() == pod);
        let uid = match (record.and_then(|d| d.uid.clone()), current) {
            (Some(uid), _) => uid,
            (None, Some(p)) if loads.get(pod).is_some_and(|l| l.draining) => {
                p.metadata.uid.clone().unwrap_or_default()
            }
            _ => continue,
        };
        let params = DeleteParams::default().preconditions(Preconditions {
            uid: Some(uid),
            resource_version: None,
        });
        match pods_api.delete(pod, &params).await {
            Ok(_) => {
                ctx.event(
                    &cc,
                    EventType::Normal,
                    "Recycled",
                    "ScaleUp",
                    format!(
                        "{pod} was drained for a scale-down that no longer applies; recreating it"
                    ),
                )
                .await
            }
            // Gone already (404), or replaced by a pod with another UID (409).
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    services
        .patch(
            &resources::service_name(&cc),
            &ssa,
            &Patch::Apply(&resources::headless_service(&cc)),
        )
        .await?;
    let applied_statefulset = statefulsets
        .patch(
            &name,
            &ssa,
            &Patch::Apply(&resources::statefulset(&cc, plan.statefulset_replicas)),
        )
        .await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    budgets
        .patch(
            &name,
            &ssa,
            &Patch::Apply(&resources::disruption_budget(&cc)),
        )
        .await?;
    // Routes follow the StatefulSet's count, so a draining pod keeps its
    // route until the scale-down removes it. A failure here leaves the chat
    // servers running; it shows as Degraded until the next attempt works.
    if let Err(e) = expose::reconcile(&client, &cc, plan.statefulset_replicas).await {
        problems.push(Problem::new("ExposeFailed", e));
    }
    // With autoscaling on, the operator owns spec.replicas: its decision
    // is written there (the Desired column, `kubectl get`), and a value
    // written by hand is replaced, with an event saying so.
    if autoscaling.is_some() && health.is_some() && desired != cc.spec.replicas {
        api.patch(
            &name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": desired } })),
        )
        .await?;
        ctx.event(
            &cc,
            EventType::Normal,
            "Autoscaled",
            "Scale",
            format!(
                "spec.replicas {} -> {desired} from {connections} connections (with spec.autoscaling on, the operator owns spec.replicas)",
                cc.spec.replicas
            ),
        )
        .await;
    }
    if let Some(before) = current {
        if plan.statefulset_replicas > before {
            ctx.metrics.scale_ups.inc();
            ctx.event(
                &cc,
                EventType::Normal,
                "ScaledUp",
                "Scale",
                format!("{before} -> {} chat server pods", plan.statefulset_replicas),
            )
            .await;
        } else if plan.statefulset_replicas < before {
            ctx.metrics.scale_downs.inc();
            if !plan.cut_short.is_empty() {
                ctx.metrics.drain_timeouts.add(plan.cut_short.len() as u64);
                ctx.event(
                    &cc,
                    EventType::Warning,
                    "DrainTimedOut",
                    "Scale",
                    format!(
                        "{} removed with clients still connected: the drain took longer than {} s",
                        plan.cut_short.join(", "),
                        cc.spec.drain_timeout_seconds
                    ),
                )
                .await;
            }
            ctx.event(
                &cc,
                EventType::Normal,
                "ScaledDown",
                "Scale",
                format!(
                    "{before} -> {} chat server pods after draining",
                    plan.statefulset_replicas
                ),
            )
            .await;
        }
    }

    // Registered endpoints: ready pods that are not being drained. Left as
    // they are while health is unknown.
    let leaving: Vec<&str> = plan.draining.iter().map(|d| d.pod.as_str()).collect();
    if let (Some(fleet), Some(_)) = (&fleet, &health) {
        let mut registered: Vec<String> = pods
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .map(|p| p.name_any())
            .filter(|pod| !leaving.contains(&pod.as_str()))
            .filter(|pod| !loads.get(pod).is_some_and(|l| l.draining))
            .map(|pod| resources::server_id(&cc, &pod))
            .collect();
        registered.sort();
        if let Err(e) = fleet
            .set_registered(&format!("{ns}/{name}"), &registered)
            .await
        {
            problems.push(Problem::new("RegistrationFailed", e));
        }
    }

    let mut endpoints: Vec<EndpointStatus> = pods
        .items
        .iter()
        .map(|p| {
            let pod = p.name_any();
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            let (state, connections) = match health_of(&pod) {
                _ if p.metadata.deletion_timestamp.is_some() => (
                    "terminating",
                    health_of(&pod).map_or(0, |h| h.connections as i64),
                ),
                Some(h) if h.state == chat_store::ServerState::Draining => {
                    ("draining", h.connections as i64)
                }
                Some(h) => ("ready", h.connections as i64),
                None => ("unknown", 0),
            };
            EndpointStatus {
                address: if ip.is_empty() {
                    String::new()
                } else {
                    format!("{ip}:{}", cc.spec.port)
                },
                pod,
                state: state.into(),
                connections,
            }
        })
        .collect();
    endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
    let ready_replicas = pods.items.iter().filter(|p| pod_ready(p)).count() as i32;
    let existing = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count() as i32;
    // The apply's answer is the StatefulSet as it now is: a new template
    // shows as a generation its controller has not observed yet.
    let rollout = rollout_pending(&applied_statefulset);
    let progressing = !plan.draining.is_empty()
        || existing != desired
        || ready_replicas < desired
        || rollout.is_some();
    let ready_message = format!("{ready_replicas}/{desired} chat server pods ready");
    let mut status = ChatClusterStatus {
        observed_generation: cc.metadata.generation,
        replicas: existing,
        ready_replicas,
        label_selector: resources::selector_string(&cc),
        connections,
        endpoints,
        conditions: vec![
            condition(
                "Ready",
                ready_replicas >= desired,
                if ready_replicas >= desired {
                    "AllReady"
                } else {
                    "PodsNotReady"
                },
                ready_message,
                &previous.conditions,
                &now_text,
            ),
            condition(
                "Progressing",
                progressing,
                if !plan.draining.is_empty() {
                    "Draining"
                } else if existing != desired || ready_replicas < desired {
                    "Scaling"
                } else if rollout.is_some() {
                    "RollingOut"
                } else {
                    "Stable"
                },
                if let (true, Some(rollout)) = (plan.draining.is_empty(), &rollout) {
                    format!("target {desired} pods; {rollout}")
                } else if plan.draining.is_empty() {
                    format!("target {desired} pods")
                } else {
                    format!(
                        "draining {} pods before scaling to {desired}",
                        plan.draining.len()
                    )
                },
                &previous.conditions,
                &now_text,
            ),
            degraded(&problems, &previous.conditions, &now_text),
        ],
        recommendations,
        draining: plan.draining.clone(),
    };
    // The drain records are written before the drain requests go out, so a
    // drain that fails or never answers still has its timeout running.
    // An unchanged status is not written: each write is a watch event and
    // an etcd write, and an idle cluster needs neither.
    if cc.status.as_ref() != Some(&status) {
        write_status(&api, &name, &status).await?;
        ctx.metrics.status_writes.inc();
    }

    if let Some(fleet) = &fleet {
        let before = problems.len();
        for pod in &plan.start_draining {
            let Some(address) = pods
                .items
                .iter()
                .find(|p| &p.name_any() == pod)
                .and_then(|p| p.status.as_ref()?.pod_ip.clone())
            else {
                continue;
            };
            match fleet
                .request_drain(&format!("{address}:{}", cc.spec.port))
                .await
            {
                Ok(()) if previous.draining.iter().any(|d| &d.pod == pod) => {
                    // A retry of a drain that had not taken.
                    ctx.metrics.drains_requested.inc();
                }
                Ok(()) => {
                    ctx.metrics.drains_requested.inc();
                    ctx.event(
                        &cc,
                        EventType::Normal,
                        "DrainStarted",
                        "ScaleDown",
                        format!("asked {pod} to move its clients before removal"),
                    )
                    .await;
                }
                Err(e) => problems.push(Problem::new(
                    "DrainFailed",
                    format!(
                        "{e}; {pod} is removed after drainTimeoutSeconds ({}s) regardless",
                        cc.spec.drain_timeout_seconds
                    ),
                )),
            }
        }
        if problems.len() > before {
            status.conditions[2] = degraded(&problems, &previous.conditions, &now_text);
            write_status(&api, &name, &status).await?;
            ctx.metrics.status_writes.inc();
        }
    }
    for problem in &problems {
        ctx.event(
            &cc,
            EventType::Warning,
            problem.reason,
            "Reconcile",
            problem.message.clone(),
        )
        .await;
    }

    Ok(if plan.waiting {
        Action::requeue(Duration::from_secs(2))
    } else if !problems.is_empty() {
        Action::requeue(Duration::from_secs(10))
    } else {
        Action::requeue(Duration::from_secs(15))
    })
}

/// Shared test scenarios.
#[cfg(test)]
pub mod fixtures {
    use crate::crd::{ChatCluster, ChatClusterSpec, RedisSpec};

    pub fn chat_cluster(name: &str, namespace: &str, replicas: i32) -> ChatCluster {
        let mut cc = ChatCluster::new(
            name,
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
                node_selector: Default::default(),
                tolerations: Vec::new(),
                affinity: None,
                topology_spread_constraints: Vec::new(),
                image_pull_secrets: Vec::new(),
                pod_annotations: Default::default(),
                priority_class_name: None,
                service_account_name: None,
                drain_timeout_seconds: 30,
                redis: RedisSpec {
                    urls: Some(vec!["redis://r0:6379".into(), "redis://r1:6379".into()]),
                    secret_key_ref: None,
                    tls: None,
                },
                secret_name: "chat-secrets".into(),
                api_server_url: None,
            },
        );
        cc.metadata.namespace = Some(namespace.into());
        cc.metadata.uid = Some("7b6f1c1e-0000-4000-8000-000000000001".into());
        cc.metadata.generation = Some(1);
        cc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }

    #[test]
    fn invalid_specs_are_named() {
        let ok = fixtures::chat_cluster("c", "ns", 2).spec;
        assert!(validate(&ok).is_ok());
        let mut bad = ok.clone();
        bad.replicas = -1;
        assert!(validate(&bad).unwrap_err().contains("replicas"));
        let mut bad = ok.clone();
        bad.port = 70000;
        assert!(validate(&bad).unwrap_err().contains("port"));
        let mut bad = ok.clone();
        bad.autoscaling = Some(crate::crd::AutoscalingSpec {
            enabled: true,
            min_replicas: 5,
            max_replicas: 2,
            target_connections_per_pod: 100,
            scale_down_stabilization_seconds: 0,
        });
        assert!(validate(&bad).unwrap_err().contains("minReplicas"));
        let mut bad = ok;
        bad.redis.urls = None;
        assert!(validate(&bad).unwrap_err().contains("redis"));
    }
}

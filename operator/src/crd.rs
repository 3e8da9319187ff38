//! The `ChatCluster` custom resource (`chatclusters.chat.scalechat.dev`,
//! `v1alpha1`). `crds/chatcluster.yaml` is generated from these types by
//! `cargo run -p operator --bin crdgen`; a test fails when it drifts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub const API_GROUP: &str = "chat.scalechat.dev";
pub const FIELD_MANAGER: &str = "chat-operator";
/// The finalizer earlier operators put on every ChatCluster; this one no
/// longer adds it and removes it where found (see `controller::reconcile`).
pub const LEGACY_FINALIZER: &str = "chat.scalechat.dev/registration";

/// Desired state of a fleet of chat servers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "chat.scalechat.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    shortname = "chat",
    namespaced,
    status = "ChatClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.connections"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !self.autoscaling.enabled || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas").message("autoscaling.minReplicas must be <= autoscaling.maxReplicas"))]
pub struct ChatClusterSpec {
    /// Chat server pods (`kubectl scale` and an HPA write it through the
    /// scale subresource). With `autoscaling.enabled` the operator owns it
    /// and writes its decision here, unless an HPA targets this
    /// ChatCluster: then the HPA's value holds and autoscaling pauses.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Chat server container image.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Port of WebSocket clients, internal links and ops endpoints.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Clients' URL of a pod; `{pod}`, `{service}`, `{namespace}` and
    /// `{port}` are substituted. Default: derived from `expose` when set,
    /// else the pod's in-cluster DNS name. When set, it wins over `expose`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url_template: Option<String>,
    /// Routing for clients outside the cluster: a Service per chat server
    /// pod and a Gateway API HTTPRoute (a path per pod) or an Ingress rule
    /// (a host per pod), created and removed with the pods. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment for the chat server container. Must not repeat a
    /// variable the operator sets (POD_NAME, CHAT_SERVER_ID, CHAT_REDIS_URLS, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = refuse_operator_env)]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Pull secrets for a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Extra annotations on the chat server pods (e.g. for scraping).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Longest wait for a pod's clients to move before it is removed.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: i32,
    /// Where the Redis Cluster is.
    pub redis: RedisSpec,
    /// Secret holding `ticketSecret` and `internalSecret` (shared with the
    /// API servers).
    pub secret_name: String,
    /// The API servers' base URL, for reference in status and docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_url: Option<String>,
}

/// Makes the API server refuse `env` entries named like a variable the
/// operator sets: the StatefulSet would get two entries of one name, and
/// every server-side apply of it would fail. (`not`/`enum` rather than a CEL
/// rule: it needs no cost estimate and works on every API server version.)
fn refuse_operator_env(schema: &mut schemars::Schema) {
    if let Some(name) = schema
        .pointer_mut("/items/properties/name")
        .and_then(|n| n.as_object_mut())
    {
        name.insert(
            "not".into(),
            serde_json::json!({ "enum": crate::resources::OPERATOR_ENV }),
        );
    }
}

fn default_port() -> i32 {
    9001
}

fn default_drain_timeout() -> i32 {
    30
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    pub enabled: bool,
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Connections per pod the autoscaler aims for.
    #[schemars(range(min = 1))]
    pub target_connections_per_pod: i64,
    /// A lower replica count must be recommended this long before it is
    /// applied (scale-up is immediate).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i64,
}

fn default_stabilization() -> i64 {
    300
}

/// Redis Cluster node URLs, given inline or in a Secret key (comma-separated).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.urls) != has(self.secretKeyRef)").message("give exactly one of redis.urls or redis.secretKeyRef"))]
pub struct RedisSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// TLS to Redis (`rediss://` URLs; credentials go in the URLs, best
    /// kept in the Secret of `secretKeyRef`): the CA that signs the nodes'
    /// certificates, and a client certificate for mutual TLS. Mounted into
    /// the chat server pods and used by the operator's own connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisTls {
    /// A Secret key holding the PEM CA bundle (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_key_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) presented to
    /// Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_name: Option<String>,
}

/// How clients outside the cluster reach each chat server pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'GatewayAPI' || (has(self.gateway) && size(self.gateway.parentRefs) > 0)").message("expose.mode GatewayAPI needs expose.gateway.parentRefs"))]
#[x_kube(validation = Rule::new("!has(self.ingress) || !has(self.ingress.tlsSecretName) || self.tls").message("expose.ingress.tlsSecretName needs expose.tls: true"))]
pub struct ExposeSpec {
    /// `GatewayAPI` (preferred): an HTTPRoute per pod, clients at
    /// `<host>/<pod>/ws`, rewritten to `/ws`. `Ingress`: one Ingress with a
    /// rule per pod, clients at `<pod>.<host>/ws` (path rewrites are not
    /// portable between Ingress controllers; hosts are).
    pub mode: ExposeMode,
    /// The public DNS name. For `Ingress`, a wildcard record (and
    /// certificate) for `*.<host>` is needed.
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TLS is terminated in front of the pods (by the Gateway's listener,
    /// or by the Ingress), so clients are handed `wss://` URLs.
    #[serde(default)]
    pub tls: bool,
    /// Where the HTTPRoutes attach (mode `GatewayAPI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayExpose>,
    /// The Ingress's class and certificate (mode `Ingress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressExpose>,
    /// Annotations on the HTTPRoutes or the Ingress (an Ingress
    /// controller's timeouts, a cert-manager issuer, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Annotations on the per-pod Services (e.g. `cloud.google.com/neg`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ExposeMode {
    #[serde(rename = "GatewayAPI")]
    GatewayApi,
    Ingress,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayExpose {
    /// The Gateways (a listener of one with `sectionName`) the routes attach
    /// to, as in an HTTPRoute's `spec.parentRefs`. A Gateway in another
    /// namespace must allow routes from this one (`allowedRoutes`).
    pub parent_refs: Vec<gateway_api::httproutes::HttpRouteParentRefs>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressExpose {
    /// `spec.ingressClassName` of the Ingress; default: the cluster's
    /// default IngressClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// A `kubernetes.io/tls` Secret whose certificate covers `*.<host>`
    /// (needs `tls: true`); without it, the controller's default
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist (the StatefulSet's replicas).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource (HPA).
    #[serde(default)]
    pub label_selector: String,
    /// Open WebSocket sessions over all registered pods.
    #[serde(default)]
    pub connections: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Autoscaler recommendations inside the stabilisation window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Recommendation>,
    /// Pods being drained before removal, with when the drain began.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub pod: String,
    pub address: String,
    /// `ready`, `draining`, `terminating` (being deleted) or `unknown` (no
    /// health report).
    pub state: String,
    pub connections: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// Seconds since the epoch.
    pub at: i64,
    pub replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    pub pod: String,
    /// Seconds since the epoch.
    pub since: i64,
    /// UID of the pod asked to drain: if it is wanted again, exactly that
    /// pod is deleted (a replacement with a new UID is left alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The CRD as YAML, exactly as `crds/chatcluster.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ChatCluster::crd();
    let mut out =
        String::from("# Generated by `cargo run -p operator --bin crdgen`; do not edit.\n");
    out.push_str(&serde_saphyr::to_string(&crd).expect("the CRD serialises to YAML"));
    out
}

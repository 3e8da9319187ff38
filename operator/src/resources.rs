//! The objects a ChatCluster owns, built from its spec. Applied with
//! server-side apply under one field manager; owner references make
//! deletion cascade.
//!
//! Why a StatefulSet: stable pod names are stable chat server ids and
//! per-pod DNS names (the URLs clients are handed), and its ordered
//! removal (highest ordinal first) tells the operator in advance exactly
//! which pods a scale-down removes, so it drains those and no others.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::ChatCluster;

pub const CLUSTER_LABEL: &str = "chat.scalechat.dev/cluster";
/// Every object the operator creates carries this label; its watch of
/// StatefulSets is limited to them.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=chat-operator";

pub fn selector_labels(cc: &ChatCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "chat-server".to_owned(),
        ),
        (CLUSTER_LABEL.to_owned(), cc.name_any()),
    ])
}

/// The selector as a string, for `status.labelSelector` (HPA, scale).
pub fn selector_string(cc: &ChatCluster) -> String {
    selector_labels(cc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(cc: &ChatCluster) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cc);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "chat-operator".into(),
    );
    labels.insert("app.kubernetes.io/instance".into(), cc.name_any());
    labels
}

fn owner(cc: &ChatCluster) -> Vec<OwnerReference> {
    cc.controller_owner_ref(&()).into_iter().collect()
}

/// Name, namespace, the operator's labels and the ChatCluster as
/// controlling owner: every object the operator creates starts from this.
pub fn owned_meta(cc: &ChatCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cc.namespace(),
        labels: Some(labels(cc)),
        owner_references: Some(owner(cc)),
        ..ObjectMeta::default()
    }
}

/// The chat server id of a pod: `<pod>.<namespace>`, unique across
/// namespaces, since clusters in two namespaces may share one Redis and have
/// the same name (two `chat-0` pods). The health record, the registration
/// and the `server_id` the API hands out all use it.
pub fn server_id(cc: &ChatCluster, pod: &str) -> String {
    format!(
        "{pod}.{}",
        cc.namespace().unwrap_or_else(|| "default".into())
    )
}

pub fn service_name(cc: &ChatCluster) -> String {
    format!("{}-chat", cc.name_any())
}

/// The URL clients are handed for a pod, with `$(POD_NAME)` left for the
/// kubelet to expand in the container's environment. In order of
/// precedence: `spec.publicUrlTemplate`, the URL `spec.expose` routes
/// (see [`crate::expose::url_template`]), the pod's in-cluster DNS name.
pub fn public_url_template(cc: &ChatCluster) -> String {
    let namespace = cc.namespace().unwrap_or_else(|| "default".into());
    let template = match (&cc.spec.public_url_template, &cc.spec.expose) {
        (Some(explicit), _) => explicit.clone(),
        (None, Some(expose)) => crate::expose::url_template(expose),
        (None, None) => "ws://{pod}.{service}.{namespace}.svc.cluster.local:{port}/ws".into(),
    };
    template
        .replace("{pod}", "$(POD_NAME)")
        .replace("{service}", &service_name(cc))
        .replace("{namespace}", &namespace)
        .replace("{port}", &cc.spec.port.to_string())
}

pub fn headless_service(cc: &ChatCluster) -> Service {
    Service {
        metadata: owned_meta(cc, service_name(cc)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(cc)),
            ports: Some(vec![ServicePort {
                name: Some("ws".into()),
                port: cc.spec.port,
                target_port: Some(IntOrString::Int(cc.spec.port)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn disruption_budget(cc: &ChatCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_meta(cc, cc.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cc)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A volume of the `items` of Secret `secret` (key, file name).
fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                items
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

/// The variables the operator sets on the chat server container; a spec's
/// `env` may not repeat them (the CRD and `validate` refuse it).
pub const OPERATOR_ENV: &[&str] = &[
    "POD_NAME",
    "POD_NAMESPACE",
    "POD_IP",
    "CHAT_SERVER_ID",
    "CHAT_SERVER_LISTEN",
    "CHAT_PUBLIC_URL",
    "CHAT_INTERNAL_URL",
    "CHAT_DRAIN_TIMEOUT_MS",
    "CHAT_LOG_FORMAT",
    "CHAT_TICKET_SECRET",
    "CHAT_INTERNAL_SECRET",
    "CHAT_REDIS_URLS",
    "CHAT_REDIS_CA_FILE",
    "CHAT_REDIS_CLIENT_CERT_FILE",
    "CHAT_REDIS_CLIENT_KEY_FILE",
];

/// Where the Redis TLS files are mounted in chat server pods.
const REDIS_CA_DIR: &str = "/etc/chat/redis-tls/ca";
const REDIS_CLIENT_CERT_DIR: &str = "/etc/chat/redis-tls/client";

/// `replicas` comes from the scale plan, not directly from the spec.
pub fn statefulset(cc: &ChatCluster, replicas: i32) -> StatefulSet {
    let spec = &cc.spec;
    let port = spec.port;
    // Order matters: $(VAR) expands only variables defined earlier.
    let mut env_vars = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        // Same as `server_id`.
        env("CHAT_SERVER_ID", "$(POD_NAME).$(POD_NAMESPACE)"),
        env("CHAT_SERVER_LISTEN", format!("0.0.0.0:{port}")),
        env("CHAT_PUBLIC_URL", public_url_template(cc)),
        env(
            "CHAT_INTERNAL_URL",
            format!("ws://$(POD_IP):{port}/internal/link"),
        ),
        env(
            "CHAT_DRAIN_TIMEOUT_MS",
            (i64::from(spec.drain_timeout_seconds) * 1000).to_string(),
        ),
        env("CHAT_LOG_FORMAT", "json"),
        env_secret("CHAT_TICKET_SECRET", &spec.secret_name, "ticketSecret"),
        env_secret("CHAT_INTERNAL_SECRET", &spec.secret_name, "internalSecret"),
    ];
    match (&spec.redis.urls, &spec.redis.secret_key_ref) {
        (Some(urls), _) => env_vars.push(env("CHAT_REDIS_URLS", urls.join(","))),
        (None, Some(secret)) => {
            env_vars.push(env_secret("CHAT_REDIS_URLS", &secret.name, &secret.key))
        }
        (None, None) => {}
    }
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    if let Some(tls) = &spec.redis.tls {
        if let Some(ca) = &tls.ca_secret_key_ref {
            env_vars.push(env("CHAT_REDIS_CA_FILE", format!("{REDIS_CA_DIR}/ca.crt")));
            volumes.push(secret_volume(
                "redis-tls-ca",
                &ca.name,
                &[(&ca.key, "ca.crt")],
            ));
            mounts.push(read_only_mount("redis-tls-ca", REDIS_CA_DIR));
        }
        if let Some(secret) = &tls.client_cert_secret_name {
            let dir = REDIS_CLIENT_CERT_DIR;
            env_vars.push(env("CHAT_REDIS_CLIENT_CERT_FILE", format!("{dir}/tls.crt")));
            env_vars.push(env("CHAT_REDIS_CLIENT_KEY_FILE", format!("{dir}/tls.key")));
            volumes.push(secret_volume(
                "redis-tls-client",
                secret,
                &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")],
            ));
            mounts.push(read_only_mount("redis-tls-client", dir));
        }
    }
    env_vars.extend(spec.env.iter().cloned());
    let container = Container {
        name: "chat-server".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("ws".into()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        readiness_probe: Some(probe("/readyz", port)),
        liveness_probe: Some(probe("/healthz", port)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    StatefulSet {
        metadata: owned_meta(cc, cc.name_any()),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(service_name(cc)),
            // Pods start and stop in parallel: the operator, not ordering,
            // makes removal safe (it drains before shrinking).
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cc)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cc)),
                    annotations: (!spec.pod_annotations.is_empty())
                        .then(|| spec.pod_annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    termination_grace_period_seconds: Some(
                        i64::from(spec.drain_timeout_seconds) + 10,
                    ),
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    affinity: spec.affinity.clone(),
                    topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
                        .then(|| spec.topology_spread_constraints.clone()),
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                        .then(|| spec.image_pull_secrets.clone()),
                    priority_class_name: spec.priority_class_name.clone(),
                    service_account_name: spec.service_account_name.clone(),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::chat_cluster;

    #[test]
    fn statefulset_wires_identity_urls_secrets_and_probes() {
        let cc = chat_cluster("chat", "prod", 3);
        let sts = statefulset(&cc, 3);
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("chat-chat"));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect();
        assert_eq!(
            env["CHAT_SERVER_ID"].value.as_deref(),
            Some("$(POD_NAME).$(POD_NAMESPACE)")
        );
        assert_eq!(server_id(&cc, "chat-0"), "chat-0.prod");
        let set: Vec<&str> = env.keys().map(String::as_str).collect();
        // The Redis TLS file paths are set only with spec.redis.tls (see
        // the reconcile scenario redis_tls_files_reach_the_pods_...).
        let mut listed: Vec<&str> = OPERATOR_ENV
            .iter()
            .copied()
            .filter(|name| !name.ends_with("_FILE"))
            .collect();
        listed.sort();
        assert_eq!(set, listed, "OPERATOR_ENV lists exactly what is set");
        assert_eq!(
            env["CHAT_PUBLIC_URL"].value.as_deref(),
            Some("ws://$(POD_NAME).chat-chat.prod.svc.cluster.local:9001/ws")
        );
        assert_eq!(
            env["CHAT_REDIS_URLS"].value.as_deref(),
            Some("redis://r0:6379,redis://r1:6379")
        );
        let ticket = env["CHAT_TICKET_SECRET"].value_from.as_ref().unwrap();
        assert_eq!(ticket.secret_key_ref.as_ref().unwrap().name, "chat-secrets");
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        let owner = &sts.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "ChatCluster");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn public_url_template_prefers_the_explicit_one_then_expose_then_cluster_dns() {
        let mut cc = chat_cluster("chat", "prod", 1);
        assert_eq!(
            public_url_template(&cc),
            "ws://$(POD_NAME).chat-chat.prod.svc.cluster.local:9001/ws"
        );
        cc.spec.expose = Some(crate::crd::ExposeSpec {
            mode: crate::crd::ExposeMode::Ingress,
            host: "chat.example.com".into(),
            tls: true,
            gateway: None,
            ingress: None,
            annotations: BTreeMap::new(),
            service_annotations: BTreeMap::new(),
        });
        assert_eq!(
            public_url_template(&cc),
            "wss://$(POD_NAME).chat.example.com/ws"
        );
        cc.spec.public_url_template = Some("wss://edge.example.com/{namespace}/{pod}".into());
        assert_eq!(
            public_url_template(&cc),
            "wss://edge.example.com/prod/$(POD_NAME)"
        );
    }

    #[test]
    fn selector_string_matches_the_pod_labels() {
        let cc = chat_cluster("chat", "prod", 1);
        assert_eq!(
            selector_string(&cc),
            "app.kubernetes.io/name=chat-server,chat.scalechat.dev/cluster=chat"
        );
    }
}

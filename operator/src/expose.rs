//! Reaching the chat server pods from outside the cluster (`spec.expose`).
//!
//! A client must reach the one pod `/v1/connect` chose, so a load-balanced
//! Service will not do: every pod gets a Service of its own (selecting the
//! StatefulSet's `statefulset.kubernetes.io/pod-name` label) and a route to
//! it:
//!
//! - `GatewayAPI` (preferred): an HTTPRoute per pod matching
//!   `<host>/<pod>/ws` and rewriting the prefix to `/ws`, the one path the
//!   chat server serves clients on. One route per pod rather than one route
//!   with a rule per pod: an HTTPRoute holds at most 16 rules.
//! - `Ingress`: one Ingress with a rule per pod host, `<pod>.<host>/ws`.
//!   Path rewrites are controller annotations, not portable, so pods are
//!   told apart by host. One Ingress, not one per pod: some controllers
//!   (GCE) make a load balancer per Ingress.
//!
//! Only `/ws` is routed: `/internal/*` and `/metrics` stay in the cluster.
//!
//! The objects follow the StatefulSet's replica count, not the spec's: a
//! pod that is draining keeps its route (its clients are still connected
//! through it) until the scale-down removes the pod. Everything here is
//! labelled `chat.scalechat.dev/pod: <pod>` and owned by the ChatCluster,
//! so the operator finds its own objects to prune them, and deleting the
//! ChatCluster removes them.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewrite,
    HttpRouteRulesFiltersUrlRewritePath, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType, HttpRouteSpec,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Api, Client, ResourceExt};

use crate::crd::{ChatCluster, ExposeMode, ExposeSpec, FIELD_MANAGER};
use crate::resources::{self, CLUSTER_LABEL, MANAGED_BY_SELECTOR};

/// On every per-pod object: the pod it routes to. Listing by this label
/// (with the cluster's) finds exactly the operator's exposure objects.
pub const POD_LABEL: &str = "chat.scalechat.dev/pod";
/// The label the StatefulSet controller puts on each of its pods.
const STATEFULSET_POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The chat server's WebSocket path (chat-server's router).
const WEBSOCKET_PATH: &str = "/ws";

// ------------------------------------------------------------ names and URLs

/// The Service and the HTTPRoute of a pod.
pub fn pod_object_name(pod: &str) -> String {
    format!("{pod}-ws")
}

/// The one Ingress of a cluster in mode `Ingress`.
pub fn ingress_name(cc: &ChatCluster) -> String {
    format!("{}-ws", cc.name_any())
}

/// The path prefix of a pod in mode `GatewayAPI`.
fn gateway_path(pod: &str) -> String {
    format!("/{pod}{WEBSOCKET_PATH}")
}

/// The host of a pod in mode `Ingress`.
fn ingress_host(expose: &ExposeSpec, pod: &str) -> String {
    format!("{pod}.{}", expose.host)
}

/// The clients' URL of a pod with `{pod}` left in, matching the routes
/// built below (a test holds the two together).
pub fn url_template(expose: &ExposeSpec) -> String {
    let scheme = if expose.tls { "wss" } else { "ws" };
    match expose.mode {
        ExposeMode::GatewayApi => format!("{scheme}://{}{}", expose.host, gateway_path("{pod}")),
        ExposeMode::Ingress => {
            format!(
                "{scheme}://{}{WEBSOCKET_PATH}",
                ingress_host(expose, "{pod}")
            )
        }
    }
}

/// The pods that exist once the StatefulSet has `replicas`: the ones to
/// route to.
pub fn pods(cc: &ChatCluster, replicas: i32) -> Vec<String> {
    (0..replicas.max(0))
        .map(|ordinal| format!("{}-{ordinal}", cc.name_any()))
        .collect()
}

/// What the CRD's schema and CEL rules say, again, for objects stored
/// under an older CRD: an invalid `expose` must not produce routes that
/// cannot work.
pub fn validate(expose: &ExposeSpec) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if expose.host.len() > 253 || !expose.host.split('.').all(label_ok) {
        return Err(format!(
            "expose.host {:?} is not a lower-case DNS name",
            expose.host
        ));
    }
    let has_parents = expose
        .gateway
        .as_ref()
        .is_some_and(|g| !g.parent_refs.is_empty());
    if expose.mode == ExposeMode::GatewayApi && !has_parents {
        return Err("expose.mode GatewayAPI needs expose.gateway.parentRefs".into());
    }
    let tls_secret = expose
        .ingress
        .as_ref()
        .is_some_and(|i| i.tls_secret_name.is_some());
    if tls_secret && !expose.tls {
        return Err("expose.ingress.tlsSecretName needs expose.tls: true".into());
    }
    Ok(())
}

// ------------------------------------------------------------------ objects

fn pod_meta(cc: &ChatCluster, name: String, pod: &str) -> ObjectMeta {
    let mut meta = resources::owned_meta(cc, name);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_LABEL.into(), pod.into());
    meta
}

fn annotated(mut meta: ObjectMeta, annotations: &BTreeMap<String, String>) -> ObjectMeta {
    meta.annotations = (!annotations.is_empty()).then(|| annotations.clone());
    meta
}

/// A ClusterIP Service in front of exactly one pod.
pub fn pod_service(cc: &ChatCluster, expose: &ExposeSpec, pod: &str) -> Service {
    Service {
        metadata: annotated(
            pod_meta(cc, pod_object_name(pod), pod),
            &expose.service_annotations,
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(BTreeMap::from([(
                STATEFULSET_POD_NAME_LABEL.into(),
                pod.into(),
            )])),
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

/// `<host>/<pod>/ws...` to the pod's Service, as `/ws...`.
pub fn pod_route(cc: &ChatCluster, expose: &ExposeSpec, pod: &str) -> HttpRoute {
    let parent_refs = expose
        .gateway
        .as_ref()
        .map(|g| g.parent_refs.clone())
        .unwrap_or_default();
    let rule = HttpRouteRules {
        matches: Some(vec![HttpRouteRulesMatches {
            path: Some(HttpRouteRulesMatchesPath {
                r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                value: Some(gateway_path(pod)),
            }),
            ..HttpRouteRulesMatches::default()
        }]),
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::UrlRewrite,
            url_rewrite: Some(HttpRouteRulesFiltersUrlRewrite {
                path: Some(HttpRouteRulesFiltersUrlRewritePath {
                    r#type: HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch,
                    replace_prefix_match: Some(WEBSOCKET_PATH.into()),
                    replace_full_path: None,
                }),
                hostname: None,
            }),
            ..HttpRouteRulesFilters::default()
        }]),
        backend_refs: Some(vec![HttpRouteRulesBackendRefs {
            name: pod_object_name(pod),
            port: Some(cc.spec.port),
            ..HttpRouteRulesBackendRefs::default()
        }]),
        ..HttpRouteRules::default()
    };
    let mut route = HttpRoute::new(
        &pod_object_name(pod),
        HttpRouteSpec {
            hostnames: Some(vec![expose.host.clone()]),
            parent_refs: Some(parent_refs),
            rules: Some(vec![rule]),
        },
    );
    route.metadata = gateway_api_meta(annotated(
        pod_meta(cc, pod_object_name(pod), pod),
        &expose.annotations,
    ));
    route
}

/// gateway-api's types are built on k8s-openapi 0.28 (ours is 0.29); the
/// metadata is the same object in both, so it crosses over as JSON.
fn gateway_api_meta(
    meta: ObjectMeta,
) -> k8s_openapi_for_gateway_api::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    serde_json::to_value(meta)
        .and_then(serde_json::from_value)
        .expect("ObjectMeta has the same JSON form in k8s-openapi 0.28 and 0.29")
}

/// One Ingress, a rule per pod host, `/ws` only. `None` without pods: an
/// Ingress with neither rules nor a default backend is invalid.
pub fn pods_ingress(cc: &ChatCluster, expose: &ExposeSpec, pods: &[String]) -> Option<Ingress> {
    if pods.is_empty() {
        return None;
    }
    let hosts: Vec<String> = pods.iter().map(|pod| ingress_host(expose, pod)).collect();
    let rules = pods
        .iter()
        .zip(&hosts)
        .map(|(pod, host)| IngressRule {
            host: Some(host.clone()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some(WEBSOCKET_PATH.into()),
                    path_type: "Prefix".into(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: pod_object_name(pod),
                            port: Some(ServiceBackendPort {
                                number: Some(cc.spec.port),
                                ..ServiceBackendPort::default()
                            }),
                        }),
                        ..IngressBackend::default()
                    },
                }],
            }),
        })
        .collect();
    let settings = expose.ingress.clone().unwrap_or_default();
    let tls = expose.tls.then(|| {
        vec![IngressTLS {
            hosts: Some(hosts.clone()),
            secret_name: settings.tls_secret_name.clone(),
        }]
    });
    Some(Ingress {
        metadata: annotated(
            resources::owned_meta(cc, ingress_name(cc)),
            &expose.annotations,
        ),
        spec: Some(IngressSpec {
            ingress_class_name: settings.ingress_class_name,
            rules: Some(rules),
            tls,
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// Every object `spec.expose` asks for with the StatefulSet at `replicas`,
/// as JSON, in the order they are applied. `exposegen` prints these for the
/// offline schema checks (scripts/validate-k8s.py).
pub fn desired_objects(cc: &ChatCluster, replicas: i32) -> Vec<serde_json::Value> {
    let Some(expose) = &cc.spec.expose else {
        return Vec::new();
    };
    let pods = pods(cc, replicas);
    // k8s-openapi's and gateway-api's types carry apiVersion and kind.
    let json = |result: serde_json::Result<serde_json::Value>| result.expect("objects serialise");
    let mut objects: Vec<serde_json::Value> = pods
        .iter()
        .map(|pod| json(serde_json::to_value(pod_service(cc, expose, pod))))
        .collect();
    match expose.mode {
        ExposeMode::GatewayApi => objects.extend(
            pods.iter()
                .map(|pod| json(serde_json::to_value(pod_route(cc, expose, pod)))),
        ),
        ExposeMode::Ingress => objects.extend(
            pods_ingress(cc, expose, &pods).map(|ingress| json(serde_json::to_value(ingress))),
        ),
    }
    objects
}

// ---------------------------------------------------------- apply and prune

/// A failed call, with what it was about. The reconcile goes on without
/// it (the chat servers still run); it shows as `Degraded: ExposeFailed`.
#[derive(Debug, thiserror::Error)]
#[error("{action} {kind} {name}: {source}{hint}")]
pub struct ExposeError {
    action: &'static str,
    kind: &'static str,
    name: String,
    hint: &'static str,
    #[source]
    source: kube::Error,
}

impl ExposeError {
    fn new(action: &'static str, kind: &'static str, name: &str, source: kube::Error) -> Self {
        let not_found = matches!(&source, kube::Error::Api(s) if s.code == 404);
        ExposeError {
            action,
            kind,
            name: name.to_owned(),
            // The API server answers 404 for a kind it does not serve.
            hint: if kind == "HTTPRoute" && not_found {
                " (are the Gateway API CRDs installed?)"
            } else {
                ""
            },
            source,
        }
    }
}

/// `gateway.networking.k8s.io/v1` HTTPRoute, for kube 5's dynamic API
/// (gateway-api's type implements kube 4's `Resource`, not ours).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Applies what `spec.expose` asks for with the StatefulSet at `replicas`
/// and deletes the operator's exposure objects it no longer asks for (pods
/// scaled away, another mode, or `expose` removed).
pub async fn reconcile(
    client: &Client,
    cc: &ChatCluster,
    replicas: i32,
) -> Result<(), ExposeError> {
    let ns = cc.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &http_route_resource());
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ssa = PatchParams::apply(FIELD_MANAGER).force();

    let mut keep_services = BTreeSet::new();
    let mut keep_routes = BTreeSet::new();
    let mut keep_ingresses = BTreeSet::new();
    if let Some(expose) = &cc.spec.expose {
        let pods = pods(cc, replicas);
        for pod in &pods {
            let name = pod_object_name(pod);
            services
                .patch(&name, &ssa, &Patch::Apply(&pod_service(cc, expose, pod)))
                .await
                .map_err(|e| ExposeError::new("applying", "Service", &name, e))?;
            keep_services.insert(name);
        }
        match expose.mode {
            ExposeMode::GatewayApi => {
                for pod in &pods {
                    let name = pod_object_name(pod);
                    routes
                        .patch(&name, &ssa, &Patch::Apply(&pod_route(cc, expose, pod)))
                        .await
                        .map_err(|e| ExposeError::new("applying", "HTTPRoute", &name, e))?;
                    keep_routes.insert(name);
                }
            }
            ExposeMode::Ingress => {
                if let Some(ingress) = pods_ingress(cc, expose, &pods) {
                    let name = ingress_name(cc);
                    ingresses
                        .patch(&name, &ssa, &Patch::Apply(&ingress))
                        .await
                        .map_err(|e| ExposeError::new("applying", "Ingress", &name, e))?;
                    keep_ingresses.insert(name);
                }
            }
        }
    }

    let per_pod = format!("{},{POD_LABEL}", owned_selector(cc));
    prune(&services, "Service", &per_pod, &keep_services).await?;
    prune(&routes, "HTTPRoute", &per_pod, &keep_routes).await?;
    prune(&ingresses, "Ingress", &owned_selector(cc), &keep_ingresses).await
}

/// The labels of every object the operator made for this cluster.
fn owned_selector(cc: &ChatCluster) -> String {
    format!("{MANAGED_BY_SELECTOR},{CLUSTER_LABEL}={}", cc.name_any())
}

/// Deletes the objects `selector` finds that are not in `keep`. A kind the
/// API server does not serve (no Gateway API CRDs: 404) or the Role does
/// not grant (an older chart: 403) has nothing of ours to prune.
async fn prune<K>(
    api: &Api<K>,
    kind: &'static str,
    selector: &str,
    keep: &BTreeSet<String>,
) -> Result<(), ExposeError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let found = match api.list(&ListParams::default().labels(selector)).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => return Ok(()),
        Err(e) => return Err(ExposeError::new("listing", kind, selector, e)),
    };
    for name in found
        .iter()
        .map(|o| o.name_any())
        .filter(|n| !keep.contains(n))
    {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ExposeError::new("deleting", kind, &name, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::chat_cluster;
    use crate::crd::{GatewayExpose, IngressExpose};
    use gateway_api::httproutes::HttpRouteParentRefs;

    fn exposed(mode: ExposeMode, tls: bool) -> ChatCluster {
        let mut cc = chat_cluster("chat", "prod", 2);
        cc.spec.expose = Some(ExposeSpec {
            mode,
            host: "chat.example.com".into(),
            tls,
            gateway: Some(GatewayExpose {
                parent_refs: vec![HttpRouteParentRefs {
                    name: "public".into(),
                    ..HttpRouteParentRefs::default()
                }],
            }),
            ingress: Some(IngressExpose::default()),
            annotations: BTreeMap::new(),
            service_annotations: BTreeMap::new(),
        });
        cc
    }

    #[test]
    fn the_gateway_url_is_the_path_its_route_matches_and_rewrites_to_ws() {
        let cc = exposed(ExposeMode::GatewayApi, true);
        let expose = cc.spec.expose.as_ref().unwrap();
        let url = url_template(expose).replace("{pod}", "chat-1");
        assert_eq!(url, "wss://chat.example.com/chat-1/ws");
        let route = serde_json::to_value(pod_route(&cc, expose, "chat-1")).unwrap();
        let rule = &route["spec"]["rules"][0];
        let prefix = rule["matches"][0]["path"]["value"].as_str().unwrap();
        let host = route["spec"]["hostnames"][0].as_str().unwrap();
        assert_eq!(url, format!("wss://{host}{prefix}"));
        let rewrite = &rule["filters"][0]["urlRewrite"]["path"];
        assert_eq!(rewrite["replacePrefixMatch"], WEBSOCKET_PATH);
        assert_eq!(
            rule["backendRefs"][0]["name"],
            pod_service(&cc, expose, "chat-1").metadata.name.unwrap()
        );
    }

    #[test]
    fn the_ingress_url_is_a_host_of_its_rules_and_ws_without_tls() {
        let cc = exposed(ExposeMode::Ingress, false);
        let expose = cc.spec.expose.as_ref().unwrap();
        assert_eq!(url_template(expose), "ws://{pod}.chat.example.com/ws");
        let ingress = pods_ingress(&cc, expose, &pods(&cc, 2)).unwrap();
        let spec = ingress.spec.unwrap();
        let rule = &spec.rules.unwrap()[1];
        assert_eq!(rule.host.as_deref(), Some("chat-1.chat.example.com"));
        assert_eq!(
            rule.http.as_ref().unwrap().paths[0].path.as_deref(),
            Some("/ws")
        );
        assert!(spec.tls.is_none(), "no TLS block without tls");
        assert!(pods_ingress(&cc, expose, &[]).is_none());
    }

    #[test]
    fn the_route_kind_is_what_the_dynamic_api_sends_it_as() {
        let cc = exposed(ExposeMode::GatewayApi, false);
        let route =
            serde_json::to_value(pod_route(&cc, cc.spec.expose.as_ref().unwrap(), "chat-0"))
                .unwrap();
        let resource = http_route_resource();
        assert_eq!(route["apiVersion"], resource.api_version);
        assert_eq!(route["kind"], resource.kind);
        assert_eq!(route["metadata"]["namespace"], "prod");
        assert_eq!(route["metadata"]["labels"][POD_LABEL], "chat-0");
    }

    #[test]
    fn desired_objects_are_a_service_and_route_per_pod_or_one_ingress() {
        let kinds = |cc: &ChatCluster| -> Vec<String> {
            desired_objects(cc, 2)
                .iter()
                .map(|o| {
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect()
        };
        assert_eq!(
            kinds(&exposed(ExposeMode::GatewayApi, true)),
            [
                "Service/chat-0-ws",
                "Service/chat-1-ws",
                "HTTPRoute/chat-0-ws",
                "HTTPRoute/chat-1-ws"
            ]
        );
        assert_eq!(
            kinds(&exposed(ExposeMode::Ingress, true)),
            ["Service/chat-0-ws", "Service/chat-1-ws", "Ingress/chat-ws"]
        );
        assert!(kinds(&chat_cluster("chat", "prod", 2)).is_empty());
    }

    #[test]
    fn invalid_expose_settings_are_named() {
        let cc = exposed(ExposeMode::GatewayApi, false);
        let ok = cc.spec.expose.unwrap();
        assert!(validate(&ok).is_ok());
        for host in [
            "",
            "Chat.example.com",
            "chat..example.com",
            "-chat.example.com",
            "chat.example.com:443",
        ] {
            let bad = ExposeSpec {
                host: host.into(),
                ..ok.clone()
            };
            assert!(
                validate(&bad).unwrap_err().contains("expose.host"),
                "{host:?}"
            );
        }
        let bad = ExposeSpec {
            gateway: None,
            ..ok.clone()
        };
        assert!(validate(&bad).unwrap_err().contains("parentRefs"));
        let bad = ExposeSpec {
            mode: ExposeMode::Ingress,
            ingress: Some(IngressExpose {
                tls_secret_name: Some("certs".into()),
                ..IngressExpose::default()
            }),
            ..ok
        };
        assert!(validate(&bad).unwrap_err().contains("tls"));
    }
}

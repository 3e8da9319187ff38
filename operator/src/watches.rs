//! What wakes a reconcile, and what does not.
//!
//! - A ChatCluster wakes it only when its generation changes (a spec
//!   change, including `kubectl scale` through the scale subresource, or
//!   its deletion). Status writes, the operator's own included, do not:
//!   without this filter every status write (connection counts, autoscaler
//!   timestamps) was a watch event that ran the next reconcile at once, a
//!   loop bounded only by the API server. Load changes are picked up by the
//!   periodic requeue instead.
//! - A StatefulSet wakes its owner's reconcile, but only the operator's own
//!   StatefulSets are watched (label `app.kubernetes.io/managed-by`), not
//!   every StatefulSet in scope.

use futures_util::Stream;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Api, Client};
use std::sync::Arc;

use crate::controller::{error_policy, reconcile, Context, Error};
use crate::crd::ChatCluster;
use crate::resources::MANAGED_BY_SELECTOR;

/// The controller over the ChatClusters of `namespace` (all namespaces
/// when `None`), with the watches above.
pub fn controller(client: Client, namespace: Option<&str>) -> Controller<ChatCluster> {
    let (clusters, statefulsets): (Api<ChatCluster>, Api<StatefulSet>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (reader, writer) = reflector::store();
    // The store sees every event (so reconcile reads the latest status);
    // only generation changes go on to trigger.
    let trigger = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(trigger, reader).owns(
        statefulsets,
        watcher::Config::default().labels(MANAGED_BY_SELECTOR),
    )
}

/// Runs the controller until its watches end (or, with
/// `shutdown_on_signal`, until SIGTERM).
pub fn run(
    controller: Controller<ChatCluster>,
    ctx: Arc<Context>,
) -> impl Stream<
    Item = Result<
        (ObjectRef<ChatCluster>, Action),
        kube::runtime::controller::Error<Error, watcher::Error>,
    >,
> {
    controller.run(reconcile, error_policy, ctx)
}

#!/usr/bin/env bash
# End-to-end check of the Helm chart on a local Kubernetes cluster (kind, or
# k3d): builds the three images, loads them into the cluster, installs the
# chart with development tokens, waits for everything, then through a
# port-forward gets a token, creates a room, asks POST /v1/connect for a chat
# server, opens a WebSocket handshake to that pod, scales the ChatCluster to 3
# and back to 2, checks the `kubectl get chatcluster` columns, and cleans up.
#
# NOT RUN IN CI, AND NEVER RUN BY ITS AUTHOR: the machine it was written on
# had no Docker daemon, no kind and no helm. Treat a first run as the test of
# this script too. The offline checks that do run are scripts/validate-k8s.py.
#
# Needs: docker (running), kind or k3d, helm 3, kubectl, curl, jq.
# Usage: scripts/kind-e2e.sh
# Environment:
#   CLUSTER_TOOL=kind|k3d  which tool (default: kind if installed, else k3d)
#   CLUSTER_NAME=chat-e2e  cluster to create, or to reuse when it exists
#   KEEP=1                 keep the release and the cluster afterwards
#   SKIP_BUILD=1           use images already built (scalechat/*:<appVersion>)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

CLUSTER_NAME="${CLUSTER_NAME:-chat-e2e}"
NAMESPACE=chat
RELEASE=chat
API_PORT="${API_PORT:-18080}"
WS_PORT="${WS_PORT:-19001}"
VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/chat/Chart.yaml)"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
missing=()
for tool in docker helm kubectl curl jq; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ -z "${CLUSTER_TOOL:-}" ]]; then
  if command -v kind >/dev/null 2>&1; then CLUSTER_TOOL=kind
  elif command -v k3d >/dev/null 2>&1; then CLUSTER_TOOL=k3d
  else missing+=("kind (or k3d)"); CLUSTER_TOOL=none
  fi
elif ! command -v "$CLUSTER_TOOL" >/dev/null 2>&1; then
  missing+=("$CLUSTER_TOOL")
fi
if ((${#missing[@]})); then
  die "missing: ${missing[*]}. Install them (https://kind.sigs.k8s.io, https://helm.sh) and retry."
fi
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer (is it running?)"
[[ -n "$VERSION" ]] || die "cannot read appVersion from charts/chat/Chart.yaml"

# --- cleanup and diagnostics ------------------------------------------------
pids=()
created_cluster=0
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if ((status != 0)); then
    say "FAILED (exit $status); state of namespace $NAMESPACE:"
    kubectl -n "$NAMESPACE" get chatcluster,statefulset,deployment,pod,job -o wide 2>&1 || true
    kubectl -n "$NAMESPACE" describe chatcluster 2>&1 | tail -n 40 || true
    kubectl -n "$NAMESPACE" logs deployment/"$RELEASE"-operator --tail=60 2>&1 || true
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    say "KEEP=1: leaving release $RELEASE and cluster $CLUSTER_NAME in place"
  else
    say "cleaning up"
    helm uninstall "$RELEASE" -n "$NAMESPACE" --wait --timeout 3m >/dev/null 2>&1 || true
    kubectl delete namespace "$NAMESPACE" --wait=false >/dev/null 2>&1 || true
    if ((created_cluster)); then
      case "$CLUSTER_TOOL" in
        kind) kind delete cluster --name "$CLUSTER_NAME" || true ;;
        k3d) k3d cluster delete "$CLUSTER_NAME" || true ;;
      esac
    fi
  fi
  exit "$status"
}
trap cleanup EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 2 s until it
# succeeds, or fail after SECONDS.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for: $what"
    sleep 2
  done
  echo "ok: $what"
}

cc_field() { kubectl -n "$NAMESPACE" get chatcluster "$RELEASE" -o "jsonpath={$1}"; }
cc_has() { [[ "$(cc_field "$1")" == "$2" ]]; }

# --- cluster ------------------------------------------------------------------
say "cluster $CLUSTER_NAME ($CLUSTER_TOOL)"
case "$CLUSTER_TOOL" in
  kind)
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
      echo "reusing the existing kind cluster"
    else
      kind create cluster --name "$CLUSTER_NAME" --wait 180s
      created_cluster=1
    fi
    kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null
    ;;
  k3d)
    if k3d cluster list "$CLUSTER_NAME" >/dev/null 2>&1; then
      echo "reusing the existing k3d cluster"
    else
      k3d cluster create "$CLUSTER_NAME" --wait --timeout 180s
      created_cluster=1
    fi
    kubectl config use-context "k3d-$CLUSTER_NAME" >/dev/null
    ;;
  *) die "CLUSTER_TOOL must be kind or k3d, not $CLUSTER_TOOL" ;;
esac

# --- images -------------------------------------------------------------------
images=()
for target in api-server chat-server operator; do
  image="scalechat/$target:$VERSION"
  images+=("$image")
  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    say "building $image"
    DOCKER_BUILDKIT=1 docker build --target "$target" -t "$image" .
  fi
  say "loading $image into the cluster"
  case "$CLUSTER_TOOL" in
    kind) kind load docker-image "$image" --name "$CLUSTER_NAME" ;;
    k3d) k3d image import "$image" --cluster "$CLUSTER_NAME" ;;
  esac
done

# --- install ------------------------------------------------------------------
# --wait: the cluster-init Job is a plain Job, so the API servers become
# ready once it has formed the Redis Cluster.
say "helm install $RELEASE (namespace $NAMESPACE, api.devTokens=true)"
helm install "$RELEASE" charts/chat -n "$NAMESPACE" --create-namespace \
  --set api.devTokens=true \
  --set chatCluster.autoscaling.enabled=false \
  --wait --timeout 10m

say "waiting for the rollout"
kubectl -n "$NAMESPACE" rollout status statefulset/"$RELEASE"-redis --timeout=300s
kubectl -n "$NAMESPACE" rollout status deployment/"$RELEASE"-operator --timeout=300s
kubectl -n "$NAMESPACE" rollout status deployment/"$RELEASE"-api --timeout=300s
wait_for 300 "ChatCluster $RELEASE: 2 ready chat servers" cc_has .status.readyReplicas 2

# --- the API through a port-forward -------------------------------------------
say "port-forwarding service/$RELEASE-api to 127.0.0.1:$API_PORT"
kubectl -n "$NAMESPACE" port-forward "service/$RELEASE-api" "$API_PORT:8080" >/dev/null 2>&1 &
pids+=($!)
API="http://127.0.0.1:$API_PORT"
wait_for 30 "API /readyz through the port-forward" curl -fsS --max-time 2 "$API/readyz"

say "dev token, room, connect"
TOKEN="$(curl -fsS --max-time 5 -X POST "$API/v1/auth/token" -d '{"user":"alice"}' | jq -er .token)"
ROOM="$(curl -fsS --max-time 5 -X POST "$API/v1/rooms" -H "Authorization: Bearer $TOKEN" \
  -d '{"name":"e2e"}' | jq -er .id)"
echo "room $ROOM"
connect() { curl -fsS --max-time 5 -X POST "$API/v1/connect" -H "Authorization: Bearer $TOKEN"; }
# Chat servers are placed only once the operator has registered them.
wait_for 120 "POST /v1/connect returns a chat server" connect
CONNECT="$(connect)"
echo "$CONNECT" | jq .
SERVER_ID="$(echo "$CONNECT" | jq -er .server_id)"
# Server ids are <pod>.<namespace>: the pod is the part before the dot.
POD="${SERVER_ID%%.*}"
URL="$(echo "$CONNECT" | jq -er .url)"
TICKET="$(echo "$CONNECT" | jq -er .ticket)"
[[ "$URL" == ws://* || "$URL" == wss://* ]] || die "connect url is not a WebSocket URL: $URL"

# The default URL is the pod's in-cluster DNS name; reach the pod through a
# port-forward and check the WebSocket upgrade (HTTP 101) with that ticket.
if kubectl -n "$NAMESPACE" get pod "$POD" >/dev/null 2>&1; then
  say "WebSocket handshake with pod $POD ($SERVER_ID)"
  kubectl -n "$NAMESPACE" port-forward "pod/$POD" "$WS_PORT:9001" >/dev/null 2>&1 &
  pids+=($!)
  wait_for 30 "port-forward to $SERVER_ID" curl -fsS --max-time 2 "http://127.0.0.1:$WS_PORT/healthz"
  path="/${URL#*://*/}"
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 \
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
    "http://127.0.0.1:$WS_PORT$path?ticket=$TICKET" || true)"
  [[ "$code" == 101 ]] || die "WebSocket upgrade to $SERVER_ID answered HTTP $code, expected 101"
  echo "ok: HTTP 101 Switching Protocols"
else
  echo "server_id $SERVER_ID is not a pod name; skipping the WebSocket handshake"
fi

# --- scaling --------------------------------------------------------------------
say "kubectl scale chatcluster $RELEASE --replicas 3"
kubectl -n "$NAMESPACE" scale chatcluster "$RELEASE" --replicas 3
wait_for 300 "3 pods exist" cc_has .status.replicas 3
wait_for 300 "3 chat servers ready" cc_has .status.readyReplicas 3

say "kubectl scale chatcluster $RELEASE --replicas 2 (drains the highest ordinal first)"
kubectl -n "$NAMESPACE" scale chatcluster "$RELEASE" --replicas 2
# drainTimeoutSeconds is 30 by default; allow for it plus pod termination.
wait_for 240 "back to 2 pods" cc_has .status.replicas 2
wait_for 120 "2 chat servers ready" cc_has .status.readyReplicas 2
wait_for 60 "POST /v1/connect still works" connect

say "kubectl get chatcluster"
kubectl -n "$NAMESPACE" get chatcluster
header="$(kubectl -n "$NAMESPACE" get chatcluster | head -n 1 | tr -s ' ')"
[[ "$header" == "NAME DESIRED READY CONNECTIONS AGE" ]] || die "unexpected columns: $header"
echo "ok: columns $header"

say "PASSED"

#!/usr/bin/env python3
"""Offline validation of the Kubernetes artefacts with the real engines: the
Helm chart, the CRD copy it ships, ChatCluster objects and the monitoring
pack. No cluster and no helm binary: Helm v4 runs as a library
(helm-python-sdk), Kubernetes' published schemas come from
kubernetes-validate, CEL is evaluated by cel-python, PromQL is parsed by
promql-parser, and the prometheus-operator kinds are validated by the
@kubernetes-models/prometheus-operator schemas and, for unknown fields, its
TypeScript types checked by tsc (a Node script in scripts/k8s/). Versions are pinned in scripts/requirements-k8s.txt and
scripts/k8s/package-lock.json; scripts/test.sh installs them.

Checks:
  (a) `helm lint --strict` of the chart for every Kubernetes version from
      KUBE_VERSIONS, with the default values and with monitoring on;
  (b) values: values.yaml accepted and bad value sets rejected by Helm's own
      values.schema.json validation; every value of values.yaml has a schema
      entry;
  (c) the chart's CRD copy byte-identical to crds/chatcluster.yaml (the
      generated CRD), and the CRD valid (strict) for every version;
  (d) ChatClusters (examples/chatcluster.yaml, charts/chat/ci/default-
      chatcluster.yaml and bad variants) against the CRD's openAPIV3Schema
      (as JSON Schema, unknown fields rejected) and the CRD's
      x-kubernetes-validations rules evaluated by a CEL engine, with
      `self` bound as the API server binds it (schema defaults applied
      first; transition rules with `oldSelf` only on updates);
  (e) the chart rendered by Helm for every value set a user would try; every
      rendered object valid, strictly, against the Kubernetes schemas of
      every version in KUBE_VERSIONS; ChatClusters as in (d); monitoring
      objects by the prometheus-operator schemas; and the checks that are
      ours: expected objects, environment, RBAC covering what the operator
      calls, security settings, the bundled Redis, values that must make the
      chart fail;
  (f) the monitoring pack: every PromQL expression of the PrometheusRule and
      the Grafana dashboard parses, the dashboard goes through Grafana's
      dashboard model (grafana-foundation-sdk) without losing a field, and the metric names they select equal
      scripts/k8s/monitoring-metrics.txt (which crates/e2e/tests/
      metric_names.rs checks against running processes);
  (g) charts/chat/README.md's values table equals what
      @bitnami/readme-generator-for-helm generates from values.yaml;
  (h) the objects the operator applies for spec.expose (operator/tests/
      data/expose-objects.json, printed by the operator's own code for the
      two expose examples): Services and the Ingress against Kubernetes'
      schemas (strict), HTTPRoutes against the Gateway API's
      (@kubernetes-models/gateway-api, unknown fields rejected), and that
      every route reaches the Service of its own pod.

The last line printed is "N passed, M failed, K not verified"; the exit
status is non-zero when anything failed. "Not verified" counts checks that
could not run here (shellcheck or Node missing), each printed on a line
starting with "unverified"; a green run does not cover them.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

try:
    import celpy
    import grafana_foundation_sdk.cog.plugins
    import grafana_foundation_sdk.models.dashboard
    import helm_python
    import jsonschema
    import kubernetes_validate
    import promql_parser
    import yaml
except ImportError as err:  # pragma: no cover - reported, not tested
    print(f"validate-k8s: {err}; run: python3 -m pip install -r scripts/requirements-k8s.txt", file=sys.stderr)
    print("0 passed, 1 failed, 0 not verified")
    sys.exit(1)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "chat"
CRD_PATH = ROOT / "crds" / "chatcluster.yaml"
NODE_TOOLS = ROOT / "scripts" / "k8s"
NODE_TOOLS_MISSING = "node or scripts/k8s/node_modules missing (cd scripts/k8s && npm ci)"


def has_node_models(package: str) -> bool:
    """Whether node and scripts/k8s's `@kubernetes-models/<package>` are there."""
    return bool(shutil.which("node")) and (NODE_TOOLS / "node_modules" / "@kubernetes-models" / package).is_dir()

METRICS_LIST = NODE_TOOLS / "monitoring-metrics.txt"
# Kubernetes minor versions the chart must be valid for (all that
# kubernetes-validate ships in this range).
KUBE_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0"]


# Lint with the optional templates of autoscaling, NetworkPolicy and helm test.
LINT_EXTRAS = {"autoscaling": {"chatServers": {"keda": {"enabled": True}}}, "api": {"devTokens": True},
               "networkPolicy": {"enabled": True, "chatServers": {"clientsFrom": [{"podSelector": {}}]}}}


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.not_verified = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f"\n      {detail}" if detail else ""))
        return ok

    def unverified(self, name: str, why: str) -> None:
        """A check that could not run here: neither passed nor failed."""
        self.not_verified += 1
        print(f"unverified  {name}: {why}")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_chart():
    return helm_python.Chart.load(str(CHART))


def render(chart, values: dict, release: str = "chat", namespace: str = "chat") -> dict[str, str]:
    """Helm's own rendering of a fresh install (lookup finds nothing)."""
    return chart.render(values, name=release, namespace=namespace, is_install=True)


# ---------------------------------------------------------------------------
# CRD schema -> JSON Schema; CEL rules through cel-python
# ---------------------------------------------------------------------------


def crd_to_json_schema(node, strict: bool = True):
    """openAPIV3Schema -> JSON Schema: x-kubernetes-* dropped, nullable as
    null allowed, int-or-string as integer|string, int32/int64 bounds.
    strict: objects with `properties` reject unknown fields, like kubectl's
    strict field validation (the API server otherwise prunes them)."""
    if isinstance(node, list):
        return [crd_to_json_schema(x, strict) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k.startswith("x-kubernetes-") or k == "nullable":
            continue
        if k in ("properties",):
            out[k] = {name: crd_to_json_schema(s, strict) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = crd_to_json_schema(v, strict) if isinstance(v, dict) else v
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = crd_to_json_schema(v, strict)
        elif k == "description":
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    fmt = node.get("format")
    if out.get("type") == "integer" and fmt in ("int32", "int64"):
        bits = 31 if fmt == "int32" else 63
        out.setdefault("minimum", -(2 ** bits))
        out.setdefault("maximum", 2 ** bits - 1)
    if strict and "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = (t if isinstance(t, list) else [t]) + ["null"]
    return out


def chatcluster_schema(crd: dict) -> dict:
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = crd_to_json_schema(version["schema"]["openAPIV3Schema"])
    group = crd["spec"]["group"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


def storage_schema(crd: dict) -> dict:
    return next(v for v in crd["spec"]["versions"] if v.get("storage"))["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict, value):
    """The API server's defaulting: absent fields with a `default` get it,
    in every object that is present (before validation and CEL)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in out:
                if name not in (schema.get("properties") or {}):
                    out[name] = apply_defaults(extra, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], x) for x in value]
    return value


def cel_rules_in(node, path="") -> list[tuple[str, dict]]:
    """(path, rule) for every x-kubernetes-validations rule; `[]` marks array
    items, `{}` map values."""
    found = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []) or []:
            found.append((path, rule))
        for name, sub in (node.get("properties") or {}).items():
            found += cel_rules_in(sub, f"{path}.{name}" if path else name)
        if isinstance(node.get("items"), dict):
            found += cel_rules_in(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += cel_rules_in(node["additionalProperties"], path + "{}")
    return found


class CelRules:
    """The CRD's x-kubernetes-validations compiled once by cel-python and
    evaluated as the API server does: `self` is the value at the rule's
    place in the (defaulted) object, a rule is skipped where that value is
    absent, a rule naming `oldSelf` (a transition rule) runs only on an
    update where the old value exists, and an evaluation error rejects."""

    def __init__(self, crd: dict) -> None:
        self.schema = storage_schema(crd)
        self.env = celpy.Environment()
        self.rules = []
        self.compile_errors = []
        for path, rule in cel_rules_in(self.schema):
            try:
                program = self.env.program(self.env.compile(rule["rule"]))
                self.rules.append((path, rule, program))
            except Exception as err:  # celpy raises CELParseError and friends
                self.compile_errors.append(f"{path}: {rule['rule']}: {err}")

    @staticmethod
    def _values_at(obj, path: str):
        """[(concrete path, value)] at a rule path, through lists and maps."""
        current = [("", obj)]
        if not path:
            return current
        for part in path.replace("[]", ".[]").replace("{}", ".{}").split("."):
            nxt = []
            for where, v in current:
                if part in ("[]",) and isinstance(v, list):
                    nxt += [(f"{where}[{i}]", x) for i, x in enumerate(v)]
                elif part == "{}" and isinstance(v, dict):
                    nxt += [(f"{where}[{k}]", x) for k, x in v.items()]
                elif isinstance(v, dict) and part in v and v[part] is not None:
                    nxt.append((f"{where}.{part}" if where else part, v[part]))
            current = nxt
        return current

    def violations(self, obj: dict, old: dict | None = None) -> list[str]:
        obj = apply_defaults(self.schema, obj)
        old = apply_defaults(self.schema, old) if old is not None else None
        bad = []
        for path, rule, program in self.rules:
            transition = "oldSelf" in rule["rule"]
            olds = dict(self._values_at(old, path)) if old is not None else {}
            for where, value in self._values_at(obj, path):
                if transition and where not in olds:
                    continue
                activation = {"self": celpy.json_to_cel(value)}
                if transition:
                    activation["oldSelf"] = celpy.json_to_cel(olds[where])
                try:
                    result = program.evaluate(activation)
                    ok = bool(result) if isinstance(result, celpy.celtypes.BoolType) else False
                    why = rule.get("message", rule["rule"]) if not ok else ""
                except Exception as err:
                    ok, why = False, f"{rule['rule']}: evaluation error {err}"
                if not ok:
                    bad.append(f"{where or '<root>'}: {why}")
        return bad


def schema_errors(validator, obj) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]


def kube_errors(obj: dict, versions=KUBE_VERSIONS) -> list[str]:
    """kubernetes-validate, strict (unknown fields rejected), every version."""
    errs = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = "/".join(map(str, err.path)) or "<root>"
            errs.append(f"{version}: {where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errs.append(f"{version}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    return errs


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def check_lint(r: Report) -> None:
    for version in KUBE_VERSIONS:
        for label, values in (("default values", {}), ("monitoring on", {"monitoring": {"enabled": True}}),
                              ("KEDA, NetworkPolicies and the helm test on", LINT_EXTRAS)):
            result = helm_python.lint(str(CHART), values, strict=True, kube_version=f"v{version}", namespace="chat")
            # severity 1 is info ("icon is recommended"); --strict fails on 2+.
            problems = [f"{m['path']}: {m['error']}" for m in result["messages"] if m["severity"] >= 2]
            problems += result.get("errors") or []
            r.check(f"helm lint --strict, Kubernetes {version}, {label}", not problems, "; ".join(problems))


def check_values(r: Report, chart) -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    try:
        chart.validate_schema({})
        r.check("Helm accepts values.yaml against values.schema.json", True)
    except helm_python.HelmError as err:
        r.check("Helm accepts values.yaml against values.schema.json", False, str(err))

    # every leaf of values.yaml is described by the schema (ours: Helm only
    # checks values against the schema, not the schema's coverage)
    def undocumented(vals, sch, path=""):
        missing = []
        if isinstance(vals, dict):
            props = sch.get("properties", {})
            for k, x in vals.items():
                if k not in props:
                    missing.append(f"{path}{k}")
                elif "properties" in props[k]:  # not a $ref, not a free-form map
                    missing += undocumented(x, props[k], f"{path}{k}.")
        return missing

    missing = undocumented(values, schema)
    r.check("every value in values.yaml has a schema entry", not missing, ", ".join(missing))

    bad_sets = {
        "redis.mode=external without urls": {"redis": {"mode": "external"}},
        "redis.mode=sentinel": {"redis": {"mode": "sentinel"}},
        "a redis url without scheme": {"redis": {"mode": "external", "external": {"urls": ["10.0.0.1:6379"]}}},
        "bundled redis with 3 nodes": {"redis": {"bundled": {"replicas": 3}}},
        "chatCluster.port 70000": {"chatCluster": {"port": 70000}},
        "negative api.replicas": {"api": {"replicas": -1}},
        "an unknown top-level value": {"apiServer": {}},
        "a misspelt nested value": {"api": {"devToken": True}},
        "api.devTokens as a string": {"api": {"devTokens": "yes"}},
        "pullPolicy Sometimes": {"operator": {"image": {"pullPolicy": "Sometimes"}}},
        "watchNamespace with capitals": {"operator": {"watchNamespace": "Chat"}},
        "resource quantity 1 GB": {"api": {"resources": {"limits": {"memory": "1 GB"}}}},
        "a chat server env var the operator sets": {"chatCluster": {"env": [{"name": "CHAT_LOG_FORMAT",
                                                                            "value": "text"}]}},
        "monitoring scrape interval '30 seconds'": {"monitoring": {"podMonitors": {"interval": "30 seconds"}}},
        "a misspelt monitoring value": {"monitoring": {"enable": True}},
        "external Redis urls and urlsSecret together": {"redis": {"mode": "external", "external": {
            "urls": ["redis://r:6379"], "urlsSecret": {"name": "redis-urls", "key": "urls"}}}},
        "a Redis CA from a Secret and a ConfigMap together": {"redis": {"external": {"tls": {
            "caSecret": {"name": "a", "key": "ca.crt"}, "caConfigMap": {"name": "b", "key": "ca.crt"}}}}},
        "a KEDA serverAddress without a scheme": {"autoscaling": {"chatServers": {"keda": {
            "serverAddress": "prometheus:9090"}}}},
        "an HPA metric name with a dash": {"autoscaling": {"chatServers": {"hpa": {"metricName": "chat-sessions"}}}},
        "a NetworkPolicy peer that is empty": {"networkPolicy": {"chatServers": {"clientsFrom": [{}]}}},
        "tests.timeoutSeconds 0": {"tests": {"timeoutSeconds": 0}},
        "chatCluster.expose.mode Route": {"chatCluster": {"expose": {"mode": "Route", "host": "chat.example.com"}}},
        "chatCluster.expose on without a host": {"chatCluster": {"expose": {"mode": "Ingress"}}},
        "chatCluster.expose.host with a port": {"chatCluster": {"expose": {"mode": "Ingress",
                                                                           "host": "chat.example.com:443"}}},
        "chatCluster.expose GatewayAPI without parentRefs": {"chatCluster": {"expose": {
            "mode": "GatewayAPI", "host": "chat.example.com"}}},
        "chatCluster.expose.ingress.tlsSecretName without tls": {"chatCluster": {"expose": {
            "mode": "Ingress", "host": "chat.example.com", "ingress": {"tlsSecretName": "chat-pods-tls"}}}},
    }
    for name, over in bad_sets.items():
        try:
            chart.validate_schema(over)
            r.check(f"Helm's values validation rejects {name}", False, "accepted")
        except helm_python.HelmValuesError:
            r.check(f"Helm's values validation rejects {name}", True)
    return values


def check_crd(r: Report, chart) -> dict:
    a, b = CRD_PATH.read_bytes(), (CHART / "crds" / "chatcluster.yaml").read_bytes()
    r.check("charts/chat/crds/chatcluster.yaml is byte-identical to crds/chatcluster.yaml", a == b,
            "run: cp crds/chatcluster.yaml charts/chat/crds/chatcluster.yaml")
    crd = yaml.safe_load(a)
    loaded = [c["name"] for c in chart.crds]
    r.check("Helm loads exactly the ChatCluster CRD from charts/chat/crds/", loaded == ["chatcluster.yaml"]
            or [Path(n).name for n in loaded] == ["chatcluster.yaml"], str(loaded))
    errs = kube_errors(crd)
    r.check("the CRD is a valid apiextensions.k8s.io/v1 CustomResourceDefinition (strict, "
            f"Kubernetes {KUBE_VERSIONS[0]}-{KUBE_VERSIONS[-1]})", not errs, "; ".join(errs[:5]))
    r.check("the CRD is chatclusters.chat.scalechat.dev with a scale subresource",
            crd.get("metadata", {}).get("name") == "chatclusters.chat.scalechat.dev"
            and all("scale" in v.get("subresources", {}) for v in crd["spec"]["versions"]))
    return crd


def check_chatclusters(r: Report, crd: dict, cel: CelRules) -> None:
    schema = chatcluster_schema(crd)
    jsonschema.Draft7Validator.check_schema(schema)
    v = jsonschema.Draft7Validator(schema)

    r.check(f"the CRD's {len(cel.rules) + len(cel.compile_errors)} CEL rules compile (cel-python)",
            not cel.compile_errors and len(cel.rules) > 0, "; ".join(cel.compile_errors) or "no rules found")

    example = yaml.safe_load((ROOT / "examples" / "chatcluster.yaml").read_text())
    errs = schema_errors(v, example)
    r.check("examples/chatcluster.yaml validates against the CRD schema", not errs, "; ".join(errs))
    bad = cel.violations(example)
    r.check("examples/chatcluster.yaml passes the CRD's CEL rules", not bad, "; ".join(bad))

    for path in ("examples/chatcluster-gateway.yaml", "examples/chatcluster-ingress.yaml"):
        exposed = yaml.safe_load((ROOT / path).read_text())
        problems = schema_errors(v, exposed) + cel.violations(exposed)
        r.check(f"{path} validates against the CRD schema and its CEL rules", not problems, "; ".join(problems))

    default_cc = yaml.safe_load((CHART / "ci" / "default-chatcluster.yaml").read_text())
    errs = schema_errors(v, default_cc)
    r.check("charts/chat/ci/default-chatcluster.yaml validates against the CRD schema", not errs, "; ".join(errs))
    bad = cel.violations(default_cc)
    r.check("charts/chat/ci/default-chatcluster.yaml passes the CRD's CEL rules", not bad, "; ".join(bad))

    def variant(mutate):
        obj = copy.deepcopy(example)
        mutate(obj["spec"])
        return obj

    schema_bad = {
        "negative replicas": lambda s: s.update(replicas=-1),
        "port 70000": lambda s: s.update(port=70000),
        "missing image": lambda s: s.pop("image"),
        "missing secretName": lambda s: s.pop("secretName"),
        "replicas as a string": lambda s: s.update(replicas="2"),
        "drainTimeoutSeconds 7200": lambda s: s.update(drainTimeoutSeconds=7200),
        "targetConnectionsPerPod 0": lambda s: s["autoscaling"].update(targetConnectionsPerPod=0),
        "an unknown spec field (strict field validation)": lambda s: s.update(replica=3),
        "expose.mode Route": lambda s: s.update(expose={"mode": "Route", "host": "chat.example.com"}),
        "expose.host with capitals": lambda s: s.update(expose={"mode": "Ingress", "host": "Chat.example.com"}),
        "expose without a host": lambda s: s.update(expose={"mode": "Ingress"}),
    }
    for name, mutate in schema_bad.items():
        r.check(f"CRD schema rejects a ChatCluster with {name}", bool(schema_errors(v, variant(mutate))))

    def no_redis(s):
        s["redis"] = {}

    def both_redis(s):
        s["redis"] = {"urls": ["redis://redis-0.redis:6379"],
                      "secretKeyRef": {"name": "redis", "key": "urls"}}

    def secret_only(s):
        s["redis"] = {"secretKeyRef": {"name": "redis", "key": "urls"}}

    cel_cases = {
        "minReplicas > maxReplicas": (lambda s: s["autoscaling"].update(minReplicas=5, maxReplicas=3), True),
        "minReplicas > maxReplicas with autoscaling off": (
            lambda s: s["autoscaling"].update(enabled=False, minReplicas=5, maxReplicas=3), False),
        "no autoscaling block": (lambda s: s.pop("autoscaling"), False),
        "minReplicas == maxReplicas": (lambda s: s["autoscaling"].update(minReplicas=3, maxReplicas=3), False),
        "neither redis.urls nor redis.secretKeyRef": (no_redis, True),
        "both redis.urls and redis.secretKeyRef": (both_redis, True),
        "only redis.secretKeyRef": (secret_only, False),
        "expose GatewayAPI without gateway": (
            lambda s: s.update(expose={"mode": "GatewayAPI", "host": "chat.example.com"}), True),
        "expose GatewayAPI with no parentRefs": (
            lambda s: s.update(expose={"mode": "GatewayAPI", "host": "chat.example.com",
                                       "gateway": {"parentRefs": []}}), True),
        "expose GatewayAPI with a parentRef": (
            lambda s: s.update(expose={"mode": "GatewayAPI", "host": "chat.example.com",
                                       "gateway": {"parentRefs": [{"name": "public"}]}}), False),
        "expose.ingress.tlsSecretName without tls": (
            lambda s: s.update(expose={"mode": "Ingress", "host": "chat.example.com",
                                       "ingress": {"tlsSecretName": "chat-pods-tls"}}), True),
        "expose Ingress with tls and a tlsSecretName": (
            lambda s: s.update(expose={"mode": "Ingress", "host": "chat.example.com", "tls": True,
                                       "ingress": {"tlsSecretName": "chat-pods-tls"}}), False),
    }
    for name, (mutate, rejected) in cel_cases.items():
        obj = variant(mutate)
        errs = schema_errors(v, obj)
        violations = cel.violations(obj)
        if rejected:
            r.check(f"CEL rules reject a ChatCluster with {name}", bool(violations) and not errs,
                    f"schema errors {errs}" if errs else "accepted")
        else:
            r.check(f"CEL rules accept a ChatCluster with {name}", not violations and not errs,
                    "; ".join(violations + errs))
    # Transition rules (oldSelf) run on updates only: the same object as its
    # own old version must pass them too.
    bad = cel.violations(example, old=example)
    r.check("examples/chatcluster.yaml passes every CEL rule as an update of itself", not bad, "; ".join(bad))


def pod_spec(doc: dict):
    if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc.get("kind") == "Pod":
        return doc["spec"]
    return None


def security_problems(doc: dict) -> list[str]:
    spec = pod_spec(doc)
    problems = []
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 65532 \
            or (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod securityContext")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext") or {}
        if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                and sc.get("runAsNonRoot") is True and "ALL" in (sc.get("capabilities") or {}).get("drop", [])):
            problems.append(f"container {c['name']} securityContext")
        if not (c.get("resources") or {}).get("requests"):
            problems.append(f"container {c['name']} has no resource requests")
    return problems


def env_of(doc: dict, container: int = 0) -> dict:
    return {e["name"]: e for e in pod_spec(doc)["containers"][container].get("env", [])}


MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
# Kinds of other projects' CRDs with no Kubernetes schema: validated by the
# Node script (scripts/k8s/validate-monitoring.mjs) against @kubernetes-models.
OTHER_CRD_KINDS = MONITORING_KINDS | {"ScaledObject"}


def rendered_docs(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for name, text in rendered.items():
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out.append((name, doc))
    return out


def object_problems(doc: dict, cc_validator, cel: CelRules) -> list[str]:
    """A rendered object against the real schemas: Kubernetes' own for
    built-in kinds, the CRD (schema + CEL) for ChatClusters. Monitoring
    kinds are collected and checked by the Node script afterwards."""
    kind = doc.get("kind")
    if kind in OTHER_CRD_KINDS:
        return []
    if kind == "ChatCluster":
        return schema_errors(cc_validator, doc) + cel.violations(doc)
    return kube_errors(doc)


def check_default_render(r: Report, by: dict, rendered: dict) -> None:
    kinds = sorted(by)
    expected = {
        "ChatCluster/chat", "ConfigMap/chat-redis", "Deployment/chat-api", "Deployment/chat-operator",
        "Job/chat-redis-cluster-init", "PodDisruptionBudget/chat-api", "Role/chat-operator",
        "Role/chat-operator-leader-election", "RoleBinding/chat-operator", "RoleBinding/chat-operator-leader-election",
        "Secret/chat-secrets", "Service/chat-api", "Service/chat-operator-metrics", "Service/chat-redis",
        "ServiceAccount/chat-operator", "StatefulSet/chat-redis",
        "Secret/chat-redis-auth", "Role/chat-operator-redis", "RoleBinding/chat-operator-redis",
    }
    r.check("default render has exactly the expected objects", set(kinds) == expected, f"got {kinds}")

    cc = by.get("ChatCluster/chat")
    r.check("default ChatCluster has no spec.expose (routing for outside clients is off by default)",
            cc is not None and "expose" not in cc["spec"])
    ci = yaml.safe_load((CHART / "ci" / "default-chatcluster.yaml").read_text())
    r.check("rendered ChatCluster equals charts/chat/ci/default-chatcluster.yaml", cc == ci,
            f"rendered: {json.dumps(cc, sort_keys=True)}")

    api_env = env_of(by["Deployment/chat-api"])
    want = {"CHAT_API_LISTEN": "0.0.0.0:8080", "CHAT_DEV_TOKENS": "false", "CHAT_REQUIRE_REGISTRATION": "true",
            "CHAT_LOG_FORMAT": "json"}
    wrong = [k for k, val in want.items() if api_env.get(k, {}).get("value") != val]
    for env, key in (("CHAT_JWT_SECRET", "jwtSecret"), ("CHAT_TICKET_SECRET", "ticketSecret"),
                     ("CHAT_INTERNAL_SECRET", "internalSecret")):
        ref = api_env.get(env, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref != {"name": "chat-secrets", "key": key}:
            wrong.append(env)
    urls = api_env.get("CHAT_REDIS_URLS", {}).get("value", "")
    if urls != BUNDLED_URLS:
        wrong.append(f"CHAT_REDIS_URLS {urls!r}")
    if api_env.get("CHAT_REDIS_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef") != \
            {"name": "chat-redis-auth", "key": "password"}:
        wrong.append("CHAT_REDIS_PASSWORD from Secret chat-redis-auth")
    r.check("API server environment (listen, secrets, redis and its password, dev tokens off, registration)",
            not wrong, ", ".join(wrong))
    check_bundled_redis_auth(r, by)

    op = by["Deployment/chat-operator"]
    op_env = env_of(op)
    wrong = [k for k in ("CHAT_OPERATOR_LISTEN", "POD_NAME", "POD_NAMESPACE") if k not in op_env]
    if op_env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        wrong.append("POD_NAME from the downward API")
    # Redis and the internal secret: from the operator's environment, or
    # read per ChatCluster (spec.redis, spec.secretName) through a get of
    # the named Secret, which the Role must then grant.
    if "CHAT_REDIS_URLS" in op_env and op_env["CHAT_REDIS_URLS"].get("value") != urls:
        wrong.append("CHAT_REDIS_URLS differs from the API's")
    secret_gets = {name for rule in by["Role/chat-operator"]["rules"] if "secrets" in rule["resources"]
                   and "get" in rule["verbs"] for name in rule.get("resourceNames", [])}
    if "CHAT_INTERNAL_SECRET" not in op_env and "chat-secrets" not in secret_gets:
        wrong.append("neither CHAT_INTERNAL_SECRET nor a get of Secret chat-secrets")
    container = op["spec"]["template"]["spec"]["containers"][0]
    if op_env.get("CHAT_OPERATOR_LEADER_ELECTION", {}).get("value") != "true" or \
            op_env.get("CHAT_OPERATOR_LEASE", {}).get("value") != "chat-operator":
        wrong.append("leader election env")
    if op_env.get("CHAT_OPERATOR_NAMESPACE", {}).get("value") != "chat":
        wrong.append("CHAT_OPERATOR_NAMESPACE (the release namespace)")
    if container.get("args"):
        wrong.append("unexpected args (the operator is configured through its environment)")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz" or \
            container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        wrong.append("probes")
    r.check("operator Deployment (env, downward API, leader election, namespace, probes)", not wrong,
            ", ".join(wrong))

    # RBAC covers what the operator calls (operator: kube::Api on
    # chatclusters and their status and finalizers, server-side apply of
    # StatefulSets, Services and PDBs, pod watch and delete, events, and for
    # spec.expose apply, list and delete of HTTPRoutes and Ingresses).
    role = by["Role/chat-operator"]
    grants = {(g, res, verb) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
              for verb in rule["verbs"]}
    needed = {("chat.scalechat.dev", "chatclusters", "patch"), ("chat.scalechat.dev", "chatclusters/status", "patch"),
              ("chat.scalechat.dev", "chatclusters/finalizers", "update"), ("apps", "statefulsets", "delete"),
              ("", "services", "create"), ("policy", "poddisruptionbudgets", "create"), ("", "pods", "watch"),
              ("", "pods", "delete"), ("", "events", "create"), ("events.k8s.io", "events", "create"),
              ("gateway.networking.k8s.io", "httproutes", "create"), ("gateway.networking.k8s.io", "httproutes", "list"),
              ("gateway.networking.k8s.io", "httproutes", "delete"), ("networking.k8s.io", "ingresses", "create"),
              ("networking.k8s.io", "ingresses", "list"), ("networking.k8s.io", "ingresses", "delete")}
    excess = [g for g in grants if g[1] == "*" or g[2] == "*" or g[0] == "*"]
    # Secrets: at most get, and only of Secrets named in resourceNames.
    excess += [rule for rule in role["rules"] if "secrets" in rule["resources"]
               and (set(rule["verbs"]) != {"get"} or not rule.get("resourceNames"))]
    r.check("operator Role grants what the operator needs, no wildcard, Secrets only get by name",
            needed <= grants and not excess, f"missing {sorted(needed - grants)} excess {excess}")
    lease_rules = by["Role/chat-operator-leader-election"]["rules"]
    lease_grants = {(verb, tuple(rule.get("resourceNames", []))) for rule in lease_rules for verb in rule["verbs"]
                    if rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]}
    r.check("leader-election Role: leases create, and get/update/patch of this release's Lease only",
            lease_grants == {("create", ()), ("get", ("chat-operator",)), ("update", ("chat-operator",)),
                             ("patch", ("chat-operator",))} and len(lease_rules) == 2, str(lease_rules))

    secret = by["Secret/chat-secrets"]
    lens = {k: len(base64.b64decode(x)) for k, x in secret.get("data", {}).items()}
    r.check("Secret has jwtSecret, ticketSecret, internalSecret of 32 characters",
            lens == {"jwtSecret": 32, "ticketSecret": 32, "internalSecret": 32}, str(lens))

    sts = by["StatefulSet/chat-redis"]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    conf = by["ConfigMap/chat-redis"]["data"]["redis.conf"]
    r.check("bundled Redis: 6 pods, cluster-enabled, node timeout 2000, appendonly, /data volume",
            sts["spec"]["replicas"] == 6 and "cluster-enabled yes" in conf and "cluster-node-timeout 2000" in conf
            and "appendonly yes" in conf and args[0] == "/conf/redis.conf"
            and any(m["mountPath"] == "/data" for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]))
    job = by["Job/chat-redis-cluster-init"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    r.check("cluster-init Job is a plain Job (not a hook, so --wait works) running redis-cli --cluster create once",
            "helm.sh/hook" not in (job["metadata"].get("annotations") or {})
            and job["spec"].get("ttlSecondsAfterFinished") == 600
            and "--cluster create" in script and "--cluster-replicas 1" in script and "cluster_state" in script)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-s", "sh", "-"], input=script, text=True, capture_output=True)
        r.check("cluster-init Job script passes shellcheck (sh)", proc.returncode == 0, proc.stdout[-2000:])
    else:
        r.unverified("cluster-init Job script passes shellcheck (sh)", "shellcheck is not installed, not run")
    notes = next((t for n, t in rendered.items() if n.endswith("NOTES.txt")), "")
    r.check("NOTES.txt renders and mentions /v1/connect", "/v1/connect" in notes)


BUNDLED_URLS = ",".join(f"redis://chat-redis-{i}.chat-redis.chat.svc.cluster.local:6379" for i in range(6))


def check_bundled_redis_auth(r: Report, by: dict) -> None:
    """The bundled Redis's generated password (release chat, namespace
    chat): one Secret kept across upgrades and uninstalls, required by
    redis.conf (through an included file, not the ConfigMap), used by the
    probes, the cluster-init Job, the API servers and, through the URLs in
    the ChatCluster's secretKeyRef, the operator and the chat servers; the
    operator may get that Secret and nothing more."""
    wrong = []
    secret = by.get("Secret/chat-redis-auth") or {}
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    password = data.get("password", "")
    if len(password) != 32 or not password.isalnum():
        wrong.append("password: 32 alphanumeric characters")
    if data.get("urls") != BUNDLED_URLS.replace("redis://", f"redis://:{password}@"):
        wrong.append(f"urls: the bundled URLs with the password, got {data.get('urls')!r}")
    if data.get("auth.conf") != f"requirepass {password}\nmasterauth {password}\n":
        wrong.append("auth.conf: requirepass and masterauth")
    if (secret.get("metadata", {}).get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
        wrong.append("helm.sh/resource-policy: keep")
    template = (CHART / "templates" / "redis-auth-secret.yaml").read_text()
    if 'lookup "v1" "Secret"' not in template:
        wrong.append("no lookup of the existing Secret in the template")
    conf = by["ConfigMap/chat-redis"]["data"]["redis.conf"]
    if "include /auth/auth.conf" not in conf or "protected-mode no" in conf or password in conf:
        wrong.append("redis.conf: include /auth/auth.conf, protected mode left on, no password in the ConfigMap")
    auth_ref = {"name": "chat-redis-auth", "key": "password"}
    sts = pod_spec(by["StatefulSet/chat-redis"])
    mounts = {m["name"]: m["mountPath"] for m in sts["containers"][0]["volumeMounts"]}
    vols = {v["name"]: v for v in sts["volumes"]}
    if mounts.get("auth") != "/auth" or (vols.get("auth", {}).get("secret") or {}).get("secretName") != "chat-redis-auth":
        wrong.append("Redis pods mount Secret chat-redis-auth at /auth")
    if env_of(by["StatefulSet/chat-redis"]).get("REDISCLI_AUTH", {}).get("valueFrom", {}).get("secretKeyRef") != auth_ref:
        wrong.append("REDISCLI_AUTH of the Redis container (probes)")
    if env_of(by["Job/chat-redis-cluster-init"]).get("REDISCLI_AUTH", {}).get("valueFrom", {}).get("secretKeyRef") \
            != auth_ref:
        wrong.append("REDISCLI_AUTH of the cluster-init Job")
    if by["ChatCluster/chat"]["spec"]["redis"] != {"secretKeyRef": {"name": "chat-redis-auth", "key": "urls"}}:
        wrong.append("ChatCluster spec.redis.secretKeyRef chat-redis-auth/urls")
    role, binding = by.get("Role/chat-operator-redis"), by.get("RoleBinding/chat-operator-redis")
    if not role or role["rules"] != [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["chat-redis-auth"],
                                      "verbs": ["get"]}]:
        wrong.append("Role chat-operator-redis: get of Secret chat-redis-auth only")
    if not binding or binding["subjects"] != [{"kind": "ServiceAccount", "name": "chat-operator", "namespace": "chat"}] \
            or binding["roleRef"]["name"] != "chat-operator-redis":
        wrong.append("RoleBinding chat-operator-redis to the operator's ServiceAccount")
    r.check("bundled Redis password: Secret kept (lookup, resource-policy keep) with password, URLs and "
            "requirepass/masterauth; used by redis.conf, probes, cluster-init Job, API servers, the ChatCluster's "
            "secretKeyRef; the operator may get it", not wrong, "; ".join(wrong))


def expect_external(by: dict) -> list[str]:
    problems = []
    if any(k.endswith("-redis") or "redis-cluster-init" in k or "redis-auth" in k or k.endswith("-operator-redis")
           for k in by):
        problems.append("bundled Redis objects rendered in external mode")
    api = next(d for k, d in by.items() if k.startswith("Deployment/") and k.endswith("-api"))
    if {"CHAT_REDIS_PASSWORD", "CHAT_REDIS_USERNAME", "CHAT_REDIS_CA_FILE"} & set(env_of(api)):
        problems.append("Redis AUTH/TLS variables without their values")
    cc = next(d for k, d in by.items() if k.startswith("ChatCluster/"))
    api_env = env_of(next(d for k, d in by.items() if k.startswith("Deployment/") and k.endswith("-api")))
    if cc["spec"]["redis"]["urls"] != ["redis://r-0.r:6379", "redis://r-1.r:6379"] or \
            api_env["CHAT_REDIS_URLS"]["value"] != "redis://r-0.r:6379,redis://r-1.r:6379":
        problems.append("ChatCluster redis.urls / CHAT_REDIS_URLS do not follow redis.external.urls")
    return problems


def expect_combined(by: dict) -> list[str]:
    problems = expect_external(by)
    if "Secret/prod-chat-secrets" in by:
        problems.append("Secret rendered despite existingSecret")
    if not {"ClusterRole/apps-prod-chat-operator", "ClusterRoleBinding/apps-prod-chat-operator",
            "HorizontalPodAutoscaler/prod-chat-api", "Ingress/prod-chat-api"} <= set(by):
        problems.append(f"missing cluster RBAC, HPA or Ingress: {sorted(by)}")
    if "CHAT_OPERATOR_NAMESPACE" in env_of(by["Deployment/prod-chat-operator"]):
        problems.append("CHAT_OPERATOR_NAMESPACE set although watchNamespace is *")
    if "replicas" in by["Deployment/prod-chat-api"]["spec"]:
        problems.append("API Deployment sets replicas although the HPA owns them")
    cc = by["ChatCluster/prod-chat"]
    if cc["spec"]["secretName"] != "my-secrets":
        problems.append("ChatCluster secretName does not follow existingSecret")
    if cc["spec"]["autoscaling"]["targetConnectionsPerPod"] != 1000000:
        problems.append("large numbers must render as integers, not 1e+06")
    api_env = env_of(by["Deployment/prod-chat-api"])
    if api_env["CHAT_DEV_TOKENS"]["value"] != "true" or \
            api_env["CHAT_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] != "my-secrets":
        problems.append("API env does not follow devTokens/existingSecret")
    if by["Ingress/prod-chat-api"]["spec"]["tls"][0]["hosts"] != ["chat.example.com"]:
        problems.append("ingress tls hosts default to [host]")
    return problems


def expect_minimal(by: dict) -> list[str]:
    problems = []
    if "PodDisruptionBudget/prod-chat-api" in by:
        problems.append("PDB rendered for a single API replica")
    if any(k.startswith("ChatCluster/") for k in by):
        problems.append("ChatCluster rendered although disabled")
    if "Role/prod-chat-operator-leader-election" in by or \
            env_of(by["Deployment/prod-chat-operator"])["CHAT_OPERATOR_LEADER_ELECTION"]["value"] != "false":
        problems.append("leader election Role rendered or not turned off although disabled")
    if env_of(by["Deployment/prod-chat-operator"])["CHAT_OPERATOR_NAMESPACE"]["value"] != "apps":
        problems.append("CHAT_OPERATOR_NAMESPACE is not the release namespace")
    vols = by["StatefulSet/prod-chat-redis"]["spec"]["template"]["spec"]["volumes"]
    if not any(x["name"] == "data" and "emptyDir" in x for x in vols):
        problems.append("no emptyDir data volume without persistence")
    if any(k.startswith("PersistentVolumeClaim") for k in by) or \
            by["StatefulSet/prod-chat-redis"]["spec"].get("volumeClaimTemplates"):
        problems.append("volume claims without persistence")
    return problems


def expect_dev_tokens(by: dict) -> list[str]:
    problems = [] if env_of(by["Deployment/chat-api"])["CHAT_DEV_TOKENS"]["value"] == "true" else ["CHAT_DEV_TOKENS"]
    pod = by.get("Pod/chat-test-connect")
    if not pod:
        return problems + ["no helm test Pod with dev tokens on"]
    meta = pod["metadata"]
    if (meta.get("annotations") or {}).get("helm.sh/hook") != "test":
        problems.append("the test Pod is not a helm.sh/hook: test")
    env = env_of(pod)
    if env["API_URL"]["value"] != "http://chat-api.chat.svc.cluster.local:8080" or "CHAT_TOKEN" in env or \
            env["CHAT_POD_DOMAIN"]["value"] != "chat-chat.chat.svc.cluster.local" or env["CHAT_PORT"]["value"] != "9001":
        problems.append(f"test Pod environment {sorted(env)}")
    if pod["spec"]["containers"][0]["image"] != "redis:7-alpine" or pod["spec"].get("restartPolicy") != "Never":
        problems.append("test Pod image (the bundled Redis's) or restartPolicy")
    return problems


def test_script_problems(pod: dict) -> list[str]:
    """The helm test's busybox script through shellcheck (sh)."""
    script = pod["spec"]["containers"][0]["command"][-1]
    proc = subprocess.run(["shellcheck", "-s", "sh", "-"], input=script, text=True, capture_output=True)
    return [] if proc.returncode == 0 else [proc.stdout[-2000:]]


def expect_test_with_token_secret(by: dict) -> list[str]:
    pod = by.get("Pod/chat-test-connect")
    if not pod:
        return ["no helm test Pod with tests.tokenSecret"]
    ref = env_of(pod).get("CHAT_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    return [] if ref == {"name": "chat-test-token", "key": "token"} else [f"CHAT_TOKEN from the Secret: {ref}"]


EXTERNAL_AUTH = {"redis": {"mode": "external", "external": {
    "urlsSecret": {"name": "redis-urls", "key": "urls"}, "username": "chat",
    "passwordSecret": {"name": "redis-auth", "key": "password"}}}}


def expect_external_auth(by: dict) -> list[str]:
    """External Redis with the URLs (credentials in them) and the password
    from Secrets: the API servers and chat servers get both, the operator
    gets the URLs through spec.redis.secretKeyRef and may read that Secret."""
    problems = []
    api = env_of(by["Deployment/chat-api"])
    if api["CHAT_REDIS_URLS"].get("valueFrom", {}).get("secretKeyRef") != {"name": "redis-urls", "key": "urls"} or \
            api["CHAT_REDIS_USERNAME"].get("value") != "chat" or \
            api["CHAT_REDIS_PASSWORD"].get("valueFrom", {}).get("secretKeyRef") != {"name": "redis-auth",
                                                                                   "key": "password"}:
        problems.append("API env CHAT_REDIS_URLS/USERNAME/PASSWORD from the values' Secrets")
    cc = by["ChatCluster/chat"]["spec"]
    cc_env = {e["name"]: e for e in cc.get("env", [])}
    if cc["redis"] != {"secretKeyRef": {"name": "redis-urls", "key": "urls"}} or \
            cc_env.get("CHAT_REDIS_USERNAME", {}).get("value") != "chat" or \
            cc_env.get("CHAT_REDIS_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") != "redis-auth":
        problems.append(f"ChatCluster redis/env: {cc['redis']} {sorted(cc_env)}")
    role = by.get("Role/chat-operator-redis")
    if not role or role["rules"][0]["resourceNames"] != ["redis-urls"] or role["rules"][0]["verbs"] != ["get"]:
        problems.append("the operator may not get Secret redis-urls")
    if any("redis-auth" in k for k in by if k.startswith("Secret/")):
        problems.append("the bundled Redis's Secret rendered in external mode")
    return problems


def expect_external_tls_secrets(by: dict) -> list[str]:
    """The CA and client certificate from Secrets: the ChatCluster names
    them in spec.redis.tls (the operator mounts them into the chat servers
    and reads them), and the operator may get them."""
    problems = []
    tls = by["ChatCluster/chat"]["spec"]["redis"].get("tls")
    if tls != {"caSecretKeyRef": {"name": "redis-ca", "key": "ca.pem"}, "clientCertSecretName": "redis-client"}:
        problems.append(f"ChatCluster spec.redis.tls: {tls}")
    role = by.get("Role/chat-operator-redis")
    names = role["rules"][0]["resourceNames"] if role else []
    if sorted(names) != ["redis-ca", "redis-client", "redis-urls"]:
        problems.append(f"the operator may get Secrets {names}, wanted the URLs, CA and client certificate")
    return problems


def expect_external_tls_files(by: dict) -> list[str]:
    """A CA from a ConfigMap and a client certificate: mounted into the API
    servers, named by CHAT_REDIS_*_FILE."""
    spec = pod_spec(by["Deployment/chat-api"])
    env = env_of(by["Deployment/chat-api"])
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    problems = []
    ca_dir, cert_dir = mounts.get("redis-ca", ""), mounts.get("redis-client-cert", "")
    if env.get("CHAT_REDIS_CA_FILE", {}).get("value") != f"{ca_dir}/ca.crt" or not ca_dir or \
            vols["redis-ca"].get("configMap") != {"name": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}:
        problems.append("CA ConfigMap mounted and CHAT_REDIS_CA_FILE")
    if env.get("CHAT_REDIS_CLIENT_CERT_FILE", {}).get("value") != f"{cert_dir}/tls.crt" or not cert_dir or \
            env.get("CHAT_REDIS_CLIENT_KEY_FILE", {}).get("value") != f"{cert_dir}/tls.key" or \
            vols["redis-client-cert"]["secret"]["secretName"] != "redis-client":
        problems.append("client certificate Secret mounted and CHAT_REDIS_CLIENT_CERT_FILE/KEY_FILE")
    return problems


# The scale subresource of the chart's ChatCluster, which the HPA and KEDA drive.
CHATCLUSTER_SCALE_TARGET = {"apiVersion": "chat.scalechat.dev/v1alpha1", "kind": "ChatCluster", "name": "chat"}


def expect_chat_hpa(by: dict) -> list[str]:
    hpa = by.get("HorizontalPodAutoscaler/chat-chat-servers")
    if not hpa:
        return ["no HorizontalPodAutoscaler for the ChatCluster"]
    spec = hpa["spec"]
    problems = [] if spec["scaleTargetRef"] == CHATCLUSTER_SCALE_TARGET else [f"scaleTargetRef {spec['scaleTargetRef']}"]
    metric = spec["metrics"][0]
    if metric["type"] != "Pods" or metric["pods"]["target"] != {"type": "AverageValue", "averageValue": "5000"}:
        problems.append(f"metric {metric}")
    if by["ChatCluster/chat"]["spec"]["autoscaling"]["enabled"]:
        problems.append("the operator's autoscaling is on too")
    return problems


def expect_keda(by: dict) -> list[str]:
    so = by.get("ScaledObject/chat-chat-servers")
    if not so:
        return ["no ScaledObject"]
    problems = [] if so["spec"]["scaleTargetRef"] == CHATCLUSTER_SCALE_TARGET else ["scaleTargetRef"]
    trigger = so["spec"]["triggers"][0]
    if trigger["type"] != "prometheus" or trigger["metadata"]["threshold"] != "5000" or \
            trigger["metadata"]["query"] != 'sum(chat_server_sessions{namespace="chat", pod=~"chat-[0-9]+"})':
        problems.append(f"trigger {trigger}")
    if any(k.startswith("HorizontalPodAutoscaler/") for k in by):
        problems.append("an HPA beside KEDA's")
    return problems


# The labels the operator puts on chat server pods (operator/src/
# resources.rs, labels()) for the ChatCluster "chat".
CHAT_SERVER_POD_LABELS = {"app.kubernetes.io/name": "chat-server", "chat.scalechat.dev/cluster": "chat",
                          "app.kubernetes.io/managed-by": "chat-operator", "app.kubernetes.io/instance": "chat"}


def pod_labels(by: dict) -> dict[str, dict]:
    """component -> labels of the pods the chart renders (and the chat servers')."""
    out = {"chat-server": CHAT_SERVER_POD_LABELS}
    for key, doc in by.items():
        if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
        elif doc.get("kind") == "Pod":
            labels = doc["metadata"]["labels"]
        else:
            continue
        out[labels.get("app.kubernetes.io/component", key)] = labels
    return out


def admitted(policy: dict, port: int, labels: dict) -> bool:
    """Whether a pod of the release namespace with these labels may reach
    port of the pods the policy selects (podSelector peers only)."""
    for rule in policy["spec"]["ingress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        for peer in rule.get("from", []):
            sel = peer.get("podSelector")
            if sel is not None and "namespaceSelector" not in peer and \
                    all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items()):
                return True
    return False


def expect_network_policy(clients: bool):
    def check(by: dict) -> list[str]:
        problems = []
        labels = pod_labels(by)
        redis = by.get("NetworkPolicy/chat-redis")
        if not redis:
            return ["no NetworkPolicy for the bundled Redis"]
        if not all(redis["spec"]["podSelector"]["matchLabels"].items() <= labels["redis"].items() for _ in [0]):
            problems.append("the Redis policy does not select the Redis pods")
        for who in ("chat-server", "api", "operator", "redis-cluster-init", "redis"):
            if not admitted(redis, 6379, labels[who]):
                problems.append(f"Redis port 6379 closed to {who}")
        for who in ("test", "chat-server", "api", "operator"):
            if who in labels and admitted(redis, 16379, labels[who]):
                problems.append(f"Redis cluster bus open to {who}")
        if not admitted(redis, 16379, labels["redis"]):
            problems.append("Redis cluster bus closed to the Redis nodes")
        if "test" in labels and admitted(redis, 6379, labels["test"]):
            problems.append("Redis open to the test pod")
        chat = by.get("NetworkPolicy/chat-chat-servers")
        if not clients:
            return problems + (["a chat server policy without clientsFrom"] if chat else [])
        if not chat:
            return problems + ["no chat server policy with clientsFrom"]
        if not chat["spec"]["podSelector"]["matchLabels"].items() <= CHAT_SERVER_POD_LABELS.items():
            problems.append("the chat server policy does not select the chat server pods")
        for who in ("chat-server", "api", "operator", "test"):
            if not admitted(chat, 9001, labels[who]):
                problems.append(f"chat server port closed to {who}")
        if admitted(chat, 9001, labels["redis"]):
            problems.append("chat server port open to Redis pods")
        peers = [p for rule in chat["spec"]["ingress"] for p in rule["from"]]
        if {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} not in peers:
            problems.append("clientsFrom not admitted")
        return problems
    return check


def expect_hpa(by: dict) -> list[str]:
    hpa = by.get("HorizontalPodAutoscaler/chat-api")
    problems = [] if hpa else ["no HorizontalPodAutoscaler"]
    if hpa and (hpa["spec"]["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-api"}
                or hpa["spec"]["minReplicas"] != 3):
        problems.append(f"HPA target/min: {hpa['spec']}")
    if "replicas" in by["Deployment/chat-api"]["spec"]:
        problems.append("API Deployment sets replicas although the HPA owns them")
    return problems


def expect_ingress(by: dict) -> list[str]:
    ing = by.get("Ingress/chat-api")
    if not ing:
        return ["no Ingress"]
    rule = ing["spec"]["rules"][0]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    return [] if rule["host"] == "chat.example.org" and backend == {"name": "chat-api", "port": {"name": "http"}} \
        else [f"Ingress rule {rule}"]


def expect_expose_gateway(by: dict) -> list[str]:
    expose = by["ChatCluster/chat"]["spec"].get("expose")
    want = {"mode": "GatewayAPI", "host": "chat.example.com", "tls": True,
            "gateway": {"parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]}}
    problems = [] if expose == want else [f"spec.expose {expose}"]
    if "publicUrlTemplate" in by["ChatCluster/chat"]["spec"]:
        problems.append("publicUrlTemplate rendered: it would win over the URL expose derives")
    return problems


def expect_expose_ingress(by: dict) -> list[str]:
    expose = by["ChatCluster/chat"]["spec"].get("expose")
    want = {"mode": "Ingress", "host": "chat.example.com", "tls": True,
            "ingress": {"ingressClassName": "nginx", "tlsSecretName": "chat-pods-tls"},
            "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
            "serviceAnnotations": {"cloud.google.com/neg": '{"ingress": true}'}}
    return [] if expose == want else [f"spec.expose {expose}"]


def expect_monitoring(ns: str, dashboard_ns: str, not_ready_alert: bool):
    def check(by: dict) -> list[str]:
        problems = []
        want = {"PodMonitor/chat-api", "PodMonitor/chat-chat-server", "PodMonitor/chat-operator",
                "PrometheusRule/chat", "ConfigMap/chat-dashboard"}
        if not want <= set(by):
            problems.append(f"missing {sorted(want - set(by))}")
            return problems
        jobs = {}
        for k in ("PodMonitor/chat-api", "PodMonitor/chat-chat-server", "PodMonitor/chat-operator"):
            ep = by[k]["spec"]["podMetricsEndpoints"][0]
            jobs[k] = (ep["port"], ep["path"], [x["replacement"] for x in ep["relabelings"] if x["targetLabel"] == "job"])
            if by[k]["spec"]["namespaceSelector"] != {"matchNames": [ns]}:
                problems.append(f"{k} namespaceSelector")
        if jobs != {"PodMonitor/chat-api": ("http", "/metrics", ["chat-api"]),
                    "PodMonitor/chat-chat-server": ("ws", "/metrics", ["chat-server"]),
                    "PodMonitor/chat-operator": ("metrics", "/metrics", ["chat-operator"])}:
            problems.append(f"PodMonitor ports/paths/jobs {jobs}")
        # the ports the PodMonitors name exist on the pods they select
        api_ports = {p["name"] for p in by["Deployment/chat-api"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        op_ports = {p["name"] for p in by["Deployment/chat-operator"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
        if "http" not in api_ports or "metrics" not in op_ports:
            problems.append("PodMonitor ports not on the pods")
        for k, dep in (("PodMonitor/chat-api", "Deployment/chat-api"),
                       ("PodMonitor/chat-operator", "Deployment/chat-operator")):
            sel = by[k]["spec"]["selector"]["matchLabels"]
            labels = by[dep]["spec"]["template"]["metadata"]["labels"]
            if any(labels.get(a) != b for a, b in sel.items()):
                problems.append(f"{k} does not select the pods of {dep}")
        alerts = [x["alert"] for g in by["PrometheusRule/chat"]["spec"]["groups"] for x in g["rules"]]
        if ("ChatServerNotReady" in alerts) != not_ready_alert:
            problems.append(f"ChatServerNotReady present: {'ChatServerNotReady' in alerts}, wanted {not_ready_alert}")
        cm = by["ConfigMap/chat-dashboard"]
        if cm["metadata"]["namespace"] != dashboard_ns or cm["metadata"]["labels"].get("grafana_dashboard") != "1":
            problems.append(f"dashboard ConfigMap namespace/label {cm['metadata']}")
        try:
            if json.loads(cm["data"]["chat.json"]) != json.loads((CHART / "files/dashboards/chat.json").read_text()):
                problems.append("dashboard ConfigMap differs from files/dashboards/chat.json")
        except (KeyError, json.JSONDecodeError) as err:
            problems.append(f"dashboard JSON: {err}")
        return problems
    return check


EXTERNAL_REDIS = {"redis": {"mode": "external", "external": {"urls": ["redis://r-0.r:6379", "redis://r-1.r:6379"]}}}
NETWORK_POLICY = {"networkPolicy": {"enabled": True, "chatServers": {
    "clientsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
    "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}}}

# name -> (values, release, namespace, variant-specific check)
VARIANTS = {
    "defaults (dev tokens off, bundled Redis, monitoring off)": ({}, "chat", "chat", None),
    "dev tokens on": ({"api": {"devTokens": True}}, "chat", "chat", expect_dev_tokens),
    "external Redis (bundled Redis off)": (EXTERNAL_REDIS, "chat", "chat", expect_external),
    "API HPA on": ({"api": {"autoscaling": {"enabled": True, "minReplicas": 3}}}, "chat", "chat", expect_hpa),
    "ingress on with TLS": ({"api": {"ingress": {"enabled": True, "className": "nginx", "host": "chat.example.org",
                                                 "tls": [{"secretName": "chat-tls"}]}}}, "chat", "chat",
                            expect_ingress),
    "monitoring on": ({"monitoring": {"enabled": True}}, "chat", "chat", expect_monitoring("chat", "chat", True)),
    "monitoring on, no kube-state-metrics, dashboard in namespace grafana, extra labels": (
        {"monitoring": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                        "prometheusRule": {"kubeStateMetrics": False},
                        "dashboard": {"namespace": "grafana", "annotations": {"grafana_folder": "Chat"}}}},
        "chat", "chat", expect_monitoring("chat", "grafana", False)),
    "external Redis, API HPA and ingress, dev tokens, existing Secret, all namespaces, operator autoscaling": (
        deep_merge(EXTERNAL_REDIS, {
            "api": {"devTokens": True, "autoscaling": {"enabled": True, "minReplicas": 3},
                    "ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "chat-tls"}]}},
            "secrets": {"existingSecret": "my-secrets"},
            "operator": {"watchNamespace": "*"},
            "chatCluster": {"autoscaling": {"enabled": True, "targetConnectionsPerPod": 1000000},
                            "publicUrlTemplate": "wss://chat.example.com/{pod}/ws"},
            "monitoring": {"enabled": True},
        }), "prod", "apps", expect_combined),
    "external Redis with URLs, user and password from Secrets": (EXTERNAL_AUTH, "chat", "chat", expect_external_auth),
    "external Redis over TLS with the CA and a client certificate from Secrets, with the ChatCluster": (
        deep_merge(EXTERNAL_AUTH, {"redis": {"external": {"tls": {
            "caSecret": {"name": "redis-ca", "key": "ca.pem"}, "clientCertSecret": "redis-client"}}}}),
        "chat", "chat", expect_external_tls_secrets),
    "external Redis over TLS with a CA ConfigMap and a client certificate, no ChatCluster": (
        {"chatCluster": {"enabled": False}, "redis": {"mode": "external", "external": {
            "urls": ["rediss://r-0.r:6379"], "tls": {"caConfigMap": {"name": "redis-ca", "key": "ca.pem"},
                                                     "clientCertSecret": "redis-client"}}}},
        "chat", "chat", expect_external_tls_files),
    "chat servers scaled by an HPA on connections": ({"autoscaling": {"chatServers": {"hpa": {"enabled": True}}}},
                                                     "chat", "chat", expect_chat_hpa),
    "chat servers scaled by KEDA (prometheus trigger)": ({"autoscaling": {"chatServers": {"keda": {"enabled": True}}}},
                                                        "chat", "chat", expect_keda),
    "NetworkPolicies with clientsFrom, dev tokens (helm test)": (deep_merge(NETWORK_POLICY, {"api": {"devTokens": True}}),
                                                                "chat", "chat", expect_network_policy(True)),
    "NetworkPolicies without clientsFrom": ({"networkPolicy": {"enabled": True}}, "chat", "chat",
                                            expect_network_policy(False)),
    "helm test with a token from a Secret (dev tokens off)": (
        {"tests": {"tokenSecret": {"name": "chat-test-token"}}}, "chat", "chat", expect_test_with_token_secret),
    "chat servers exposed through Gateway API HTTPRoutes, with TLS": (
        {"chatCluster": {"expose": {"mode": "GatewayAPI", "host": "chat.example.com", "tls": True,
                                    "gateway": {"parentRefs": [{"name": "public", "namespace": "gateway-system",
                                                                "sectionName": "https"}]}}}},
        "chat", "chat", expect_expose_gateway),
    "chat servers exposed through an Ingress with a TLS Secret and annotations": (
        {"chatCluster": {"expose": {"mode": "Ingress", "host": "chat.example.com", "tls": True,
                                    "ingress": {"className": "nginx", "tlsSecretName": "chat-pods-tls"},
                                    "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
                                    "serviceAnnotations": {"cloud.google.com/neg": '{"ingress": true}'}}}},
        "chat", "chat", expect_expose_ingress),
    "one API replica, no ChatCluster, no leader election, bundled Redis without persistence": (
        {"api": {"replicas": 1}, "chatCluster": {"enabled": False}, "operator": {"leaderElection": False},
         "redis": {"bundled": {"persistence": {"enabled": False}}}}, "prod", "apps", expect_minimal),
}


def check_rendering(r: Report, chart, crd: dict, cel: CelRules) -> list[dict]:
    """Renders every variant; returns the monitoring objects of all renders."""
    cc_validator = jsonschema.Draft7Validator(chatcluster_schema(crd))
    monitoring = []
    versions = f"Kubernetes {KUBE_VERSIONS[0]}-{KUBE_VERSIONS[-1]}"
    for name, (values, release, namespace, expect) in VARIANTS.items():
        try:
            rendered = render(chart, values, release, namespace)
            docs = rendered_docs(rendered)
        except (helm_python.HelmError, yaml.YAMLError) as err:
            r.check(f"Helm renders: {name}", False, str(err))
            continue
        by = {f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}": d for _, d in docs}
        problems = []
        for key, doc in by.items():
            problems += [f"{key}: {e}" for e in object_problems(doc, cc_validator, cel)]
            if pod_spec(doc) is not None:
                problems += [f"{key}: {p}" for p in security_problems(doc)]
            if doc.get("kind") == "Pod" and shutil.which("shellcheck"):
                problems += [f"{key}: shellcheck: {p}" for p in test_script_problems(doc)]
            if doc.get("kind") in OTHER_CRD_KINDS:
                monitoring.append(doc)
        r.check(f"Helm renders: {name}: {len(by)} objects valid ({versions}, strict; ChatCluster by the CRD "
                "and CEL) with the security settings", not problems, "; ".join(problems[:8]))
        if expect is None:
            check_default_render(r, by, rendered)
        else:
            extra = expect(by)
            r.check(f"  {name}: objects follow the values", not extra, "; ".join(map(str, extra)))

    must_fail = {
        "two operators without leader election": ({"operator": {"replicas": 2, "leaderElection": False}},
                                                  "leaderElection"),
        "ChatCluster minReplicas > maxReplicas": ({"chatCluster": {"autoscaling": {"enabled": True, "minReplicas": 5,
                                                                                   "maxReplicas": 2}}},
                                                  "minReplicas"),
        "external Redis without urls": ({"redis": {"mode": "external"}}, ""),
        "chat server HPA and KEDA together": ({"autoscaling": {"chatServers": {"hpa": {"enabled": True},
                                                                              "keda": {"enabled": True}}}}, "not both"),
        "a chat server HPA with the operator's autoscaling": (
            {"autoscaling": {"chatServers": {"hpa": {"enabled": True}}},
             "chatCluster": {"autoscaling": {"enabled": True}}}, "chatCluster.autoscaling.enabled=false"),
        "KEDA without a ChatCluster": ({"autoscaling": {"chatServers": {"keda": {"enabled": True}}},
                                        "chatCluster": {"enabled": False}}, "chatCluster.enabled"),
        "an external Redis password the operator cannot use (no urlsSecret)": (
            deep_merge(EXTERNAL_REDIS, {"redis": {"external": {"passwordSecret": {"name": "redis-auth"}}}}),
            "urlsSecret"),
        "chatCluster.env repeating the Redis password the chart sets": (
            deep_merge(EXTERNAL_AUTH, {"chatCluster": {"env": [{"name": "CHAT_REDIS_PASSWORD", "value": "x"}]}}),
            "do not repeat it"),
        "a Redis CA from a ConfigMap, which the ChatCluster cannot take": (
            deep_merge(EXTERNAL_REDIS, {"redis": {"external": {"tls": {"caConfigMap": {"name": "redis-ca"}}}}}),
            "Secret only"),
    }
    for name, (values, word) in must_fail.items():
        try:
            render(chart, values)
            r.check(f"Helm refuses to render {name}", False, "rendered without error")
        except (helm_python.HelmRenderError, helm_python.HelmValuesError) as err:
            r.check(f"Helm refuses to render {name}", word in str(err), str(err))
    return monitoring


# Grafana's variables, replaced by plain values so that the expressions parse
# as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


# Functions whose argument must be a counter (they assume it only grows).
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}


def promql_metric_names(expr: str) -> dict[str, bool]:
    """Names of the series an expression selects, each with whether it is
    read as a counter (inside rate/irate/increase/resets). Raises ValueError
    when the expression does not parse."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    names: dict[str, bool] = {}

    def collect(as_counter: bool):
        def visit(node):
            if isinstance(node, promql_parser.VectorSelector):
                found = [node.name] if node.name else []
                found += [m.value for m in node.matchers.matchers if m.name == "__name__"]
                for name in found:
                    names[name] = names.get(name, False) or as_counter
            elif isinstance(node, promql_parser.Call) and node.func.name in COUNTER_FUNCTIONS:
                for arg in node.args:
                    promql_parser.walk(arg, collect(True))
                # The walk goes on into the arguments too, as non-counters,
                # which leaves them counters. (Returning False here would
                # end the whole walk, not skip the arguments: the names
                # after the first rate() of an expression went unchecked.)
            return True
        return visit

    promql_parser.walk(promql_parser.parse(expr), collect(False))
    return names


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    for p in panels(dashboard.get("panels") or []):
        for t in p.get("targets") or []:
            out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = q[len("label_values("):q.rindex(",")] if q.startswith("label_values(") else q
            out.append((f"variable {var['name']}", inner))
    return out


def monitoring_metric_list(names: dict[str, bool]) -> str:
    return ("# Metric names the chart's PrometheusRule and Grafana dashboard query, one a\n"
            "# line; `counter` after a name: it is read by rate/irate/increase/resets, so\n"
            "# it must be a counter. Written by `python3 scripts/validate-k8s.py --update`\n"
            "# from the chart, checked for drift by scripts/validate-k8s.py, and checked\n"
            "# against running processes by crates/e2e/tests/metric_names.rs.\n"
            + "".join(f"{n} counter\n" if c else f"{n}\n" for n, c in sorted(names.items())))


def fields_lost(original, again, path="") -> list[str]:
    """Where `again` (a round trip through a typed model) lacks or changed
    something `original` had."""
    if isinstance(original, dict):
        if not isinstance(again, dict):
            return [f"{path or '/'}: became {type(again).__name__}"]
        out = []
        for k, v in original.items():
            if k not in again:
                out.append(f"{path}/{k}: unknown to the model")
            else:
                out += fields_lost(v, again[k], f"{path}/{k}")
        return out
    if isinstance(original, list):
        if not isinstance(again, list) or len(original) != len(again):
            return [f"{path}: list changed"]
        return [x for i, (a, b) in enumerate(zip(original, again)) for x in fields_lost(a, b, f"{path}[{i}]")]
    return [] if original == again else [f"{path}: {original!r} became {again!r}"]


def run_crd_models(objects: list[dict]) -> tuple[list[dict], subprocess.CompletedProcess]:
    """scripts/k8s/validate-monitoring.mjs on the objects: one result each."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(objects, f)
    proc = subprocess.run([shutil.which("node"), str(NODE_TOOLS / "validate-monitoring.mjs"), f.name],
                          capture_output=True, text=True, cwd=NODE_TOOLS)
    Path(f.name).unlink()
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], proc


def check_autoscaling(r: Report, objects: list[dict]) -> None:
    """The KEDA ScaledObjects against KEDA's CRD schema (@kubernetes-models/
    keda, generated from it), strictly; the metric the HPA and KEDA read is
    one the e2e test finds on a running chat server."""
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    # The examples for ChatClusters applied by hand: the HPA against
    # Kubernetes' schemas here, the ScaledObject with the rendered ones.
    example_hpa = yaml.safe_load((ROOT / "examples" / "chatcluster-hpa.yaml").read_text())
    example_keda = yaml.safe_load((ROOT / "examples" / "chatcluster-keda.yaml").read_text())
    target = yaml.safe_load((ROOT / "examples" / "chatcluster.yaml").read_text())
    target_ref = {"apiVersion": target["apiVersion"], "kind": target["kind"], "name": target["metadata"]["name"]}
    errs = kube_errors(example_hpa)
    r.check("examples/chatcluster-hpa.yaml is a valid autoscaling/v2 HPA (strict, "
            f"Kubernetes {KUBE_VERSIONS[0]}-{KUBE_VERSIONS[-1]}) of the ChatCluster of examples/chatcluster.yaml",
            not errs and example_hpa["spec"]["scaleTargetRef"] == target_ref, "; ".join(errs[:5]))
    r.check("examples/chatcluster-keda.yaml targets the ChatCluster of examples/chatcluster.yaml",
            example_keda["spec"]["scaleTargetRef"] == target_ref)
    scaled = scaled + [example_keda]
    if not scaled:
        r.check("some variant renders a KEDA ScaledObject", False)
    elif not has_node_models("keda"):
        r.unverified(f"{len(scaled)} KEDA ScaledObjects against KEDA's CRD schema", NODE_TOOLS_MISSING)
    else:
        bad = copy.deepcopy(scaled[0])
        bad["metadata"]["name"] = "broken"
        bad["spec"]["minReplicas"] = bad["spec"].pop("minReplicaCount")
        results, proc = run_crd_models(scaled + [bad])
        ours, broken = results[:len(scaled)], results[len(scaled):]
        problems = [f"{x['name']}: {'; '.join(x['errors'])}" for x in ours if x["errors"]]
        r.check(f"{len(scaled)} KEDA ScaledObjects (rendered, and examples/chatcluster-keda.yaml) valid against "
                "KEDA's CRD schema "
                "(@kubernetes-models/keda), unknown fields rejected",
                proc.returncode == 1 and len(results) == len(scaled) + 1 and not problems,
                "; ".join(problems) or proc.stderr[-1000:])
        r.check("the strict pass rejects a ScaledObject with minReplicas (not a KEDA field)",
                len(broken) == 1 and any("minReplicas" in e for e in broken[0]["errors"]), str(broken))
    listed = {line.split()[0] for line in METRICS_LIST.read_text().splitlines() if line and not line.startswith("#")}
    values = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["chatServers"]
    names = {values["hpa"]["metricName"], example_hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]}
    for o in scaled:
        names |= set(promql_metric_names(o["spec"]["triggers"][0]["metadata"]["query"]))
    r.check(f"the autoscaling metric ({', '.join(sorted(names))}) is in scripts/k8s/monitoring-metrics.txt, "
            "so the e2e test finds it on a running chat server", names <= listed, f"missing {sorted(names - listed)}")


def check_monitoring(r: Report, chart, objects: list[dict], update: bool) -> None:
    objects = [o for o in objects if o["kind"] in MONITORING_KINDS]
    # (1) the prometheus-operator kinds against their CRDs' schemas
    node = shutil.which("node")
    script = NODE_TOOLS / "validate-monitoring.mjs"
    kinds = sorted({o["kind"] for o in objects})
    if not objects:
        r.check("some variant renders monitoring objects", False)
    elif not has_node_models("prometheus-operator"):
        r.unverified(f"{len(objects)} monitoring objects ({', '.join(kinds)}) against the prometheus-operator CRD "
                     "schemas", NODE_TOOLS_MISSING)
    else:
        # Two broken copies ride along: the validators must refuse them.
        bad_for = copy.deepcopy(next(o for o in objects if o["kind"] == "PrometheusRule"))
        bad_for["metadata"]["name"] = "broken-for"
        bad_for["spec"]["groups"][0]["rules"][0]["for"] = "2 minutes"
        bad_field = copy.deepcopy(next(o for o in objects if o["kind"] == "PodMonitor"))
        bad_field["metadata"]["name"] = "broken-field"
        bad_field["spec"]["podMetricsEndpoints"][0]["scrapeInterval"] = "30s"
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(objects + [bad_for, bad_field], f)
        proc = subprocess.run([node, str(script), f.name], capture_output=True, text=True, cwd=NODE_TOOLS)
        Path(f.name).unlink()
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        ours, broken = results[:len(objects)], results[len(objects):]
        bad = [f"{x['kind']}/{x['name']}: {'; '.join(x['errors'])}" for x in ours if x["errors"]]
        r.check(f"{len(objects)} rendered monitoring objects ({', '.join(kinds)}) valid against the "
                "prometheus-operator CRD schemas (@kubernetes-models/prometheus-operator), unknown fields rejected",
                proc.returncode == 1 and len(results) == len(objects) + 2 and not bad,
                "; ".join(bad) or proc.stderr[-1000:])
        r.check("the prometheus-operator schemas reject a PrometheusRule with `for: 2 minutes`",
                len(broken) == 2 and any("for" in e for e in broken[0]["errors"]), str(broken[:1]))
        r.check("the strict pass rejects a PodMonitor endpoint with an unknown field (scrapeInterval)",
                len(broken) == 2 and any("scrapeInterval" in e for e in broken[1]["errors"]), str(broken[1:]))

    # (2) every PromQL expression parses; the metric names they select
    sample = "sum(rate(a_total[5m])) / (sum(rate(b_total[5m])) + c)"
    r.check("the metric names of an expression are all found, counters marked (a ratio of two rates)",
            promql_metric_names(sample) == {"a_total": True, "b_total": True, "c": False},
            str(promql_metric_names(sample)))
    names: dict[str, bool] = {}

    def add(found: dict[str, bool]) -> None:
        for name, as_counter in found.items():
            names[name] = names.get(name, False) or as_counter

    docs = {f"{d['kind']}/{d['metadata']['name']}": d
            for _, d in rendered_docs(render(chart, {"monitoring": {"enabled": True}}))}
    rule = docs["PrometheusRule/chat"]
    bad = []
    count = 0
    for group in rule["spec"]["groups"]:
        for x in group["rules"]:
            count += 1
            try:
                add(promql_metric_names(x["expr"]))
            except ValueError as err:
                bad.append(f"{x.get('alert') or x.get('record')}: {err}")
    r.check(f"the PrometheusRule's {count} expressions parse as PromQL (promql-parser)", not bad and count > 0,
            "; ".join(bad))

    dashboard = json.loads((CHART / "files" / "dashboards" / "chat.json").read_text())
    queries = dashboard_queries(dashboard)
    bad = []
    for where, expr in queries:
        try:
            add(promql_metric_names(expr))
        except ValueError as err:
            bad.append(f"{where}: {err}")
    r.check(f"the Grafana dashboard's {len(queries)} queries parse as PromQL (promql-parser)",
            not bad and len(queries) > 0, "; ".join(bad))

    # (3) dashboard structure Grafana relies on
    flat = []

    def walk_panels(ps):
        for p in ps:
            flat.append(p)
            walk_panels(p.get("panels") or [])

    walk_panels(dashboard["panels"])
    ids = [p["id"] for p in flat]
    problems = []
    if len(ids) != len(set(ids)):
        problems.append("duplicate panel ids")
    for p in flat:
        g = p.get("gridPos") or {}
        if not (0 <= g.get("x", -1) and g.get("x", 0) + g.get("w", 99) <= 24 and g.get("h", 0) > 0):
            problems.append(f"panel {p.get('title')!r} gridPos {g}")
        if p["type"] != "row" and (p.get("datasource", {}).get("uid") != "${datasource}" or not p.get("targets")):
            problems.append(f"panel {p.get('title')!r} has no targets or not the ${{datasource}} variable")
    if not dashboard.get("uid") or dashboard.get("schemaVersion", 0) < 36:
        problems.append("uid or schemaVersion")
    r.check(f"the dashboard's {len(flat)} panels: unique ids, grid inside 24 columns, every panel queries "
            "the ${datasource} variable", not problems, "; ".join(problems))

    # (4) Grafana's own dashboard schema (grafana-foundation-sdk's models,
    # generated from it): a field the model does not know is dropped on the
    # way through, a value it does not accept is changed or refused.
    grafana_foundation_sdk.cog.plugins.register_default_plugins()
    lost = []
    try:
        model = grafana_foundation_sdk.models.dashboard.Dashboard.from_json(copy.deepcopy(dashboard))
        again = json.loads(json.dumps(model.to_json(),
                                      default=lambda o: o.to_json() if hasattr(o, "to_json") else str(o)))
        lost = fields_lost(dashboard, again)
    except Exception as err:  # the SDK raises KeyError/TypeError on shapes it cannot read
        lost = [f"not read by the model: {err!r}"]
    r.check("the dashboard goes through Grafana's dashboard model (grafana-foundation-sdk) without losing or "
            "changing a field", not lost, "; ".join(lost[:10]))

    # (5) the list the e2e test checks against running processes
    expected = monitoring_metric_list(names)
    if update:
        METRICS_LIST.write_text(expected)
    current = METRICS_LIST.read_text() if METRICS_LIST.exists() else ""
    r.check(f"scripts/k8s/monitoring-metrics.txt lists the {len(names)} metric names the alerts and dashboard "
            "query", current == expected,
            "run: python3 scripts/validate-k8s.py --update (then crates/e2e/tests/metric_names.rs checks them); "
            f"names now: {sorted(names)}")
    # Counters end in _total; a histogram's _bucket series are cumulative too.
    gauges_as_counters = [n for n, c in names.items()
                          if c and not n.endswith(("_total", "_bucket"))]
    r.check("rate/irate/increase/resets read only *_total and *_bucket names (counters and histograms by convention; the e2e test "
            "checks their # TYPE)", not gauges_as_counters, ", ".join(gauges_as_counters))


EXPOSE_OBJECTS = ROOT / "operator" / "tests" / "data" / "expose-objects.json"


def check_expose_objects(r: Report) -> None:
    """What the operator applies for spec.expose, as its own code prints it
    (exposegen; a cargo test keeps the file current), against the schemas
    of the API servers and the Gateway API, and routed as the docs say."""
    objects = json.loads(EXPOSE_OBJECTS.read_text())
    by_kind: dict[str, list[dict]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    r.check("operator/tests/data/expose-objects.json has Services, HTTPRoutes and an Ingress",
            sorted(by_kind) == ["HTTPRoute", "Ingress", "Service"], str(sorted(by_kind)))

    built_in = by_kind.get("Service", []) + by_kind.get("Ingress", [])
    problems = [f"{o['kind']}/{o['metadata']['name']}: {e}" for o in built_in for e in kube_errors(o)]
    r.check(f"the operator's {len(built_in)} Services and Ingresses valid (Kubernetes {KUBE_VERSIONS[0]}-"
            f"{KUBE_VERSIONS[-1]}, strict)", not problems, "; ".join(problems[:5]))

    routes = by_kind.get("HTTPRoute", [])
    if not has_node_models("gateway-api"):
        r.unverified(f"{len(routes)} HTTPRoutes against the Gateway API schema", NODE_TOOLS_MISSING)
    else:
        # Two broken copies ride along: the validators must refuse them.
        bad_enum = copy.deepcopy(routes[0])
        bad_enum["metadata"]["name"] = "broken-rewrite"
        bad_enum["spec"]["rules"][0]["filters"][0]["urlRewrite"]["path"]["type"] = "ReplacePrefix"
        bad_field = copy.deepcopy(routes[0])
        bad_field["metadata"]["name"] = "broken-field"
        bad_field["spec"]["rules"][0]["backendRefs"][0]["servicePort"] = 9001
        results, proc = run_crd_models(routes + [bad_enum, bad_field])
        ours, broken = results[:len(routes)], results[len(routes):]
        problems = [f"{x['name']}: {'; '.join(x['errors'])}" for x in ours if x["errors"]]
        r.check(f"the operator's {len(routes)} HTTPRoutes valid against the Gateway API schema "
                "(@kubernetes-models/gateway-api), unknown fields rejected",
                proc.returncode == 1 and len(results) == len(routes) + 2 and not problems,
                "; ".join(problems) or proc.stderr[-1000:])
        r.check("the Gateway API schema rejects a URLRewrite of type ReplacePrefix, the strict pass a "
                "backendRef with servicePort",
                len(broken) == 2 and any("type" in e for e in broken[0]["errors"])
                and any("servicePort" in e for e in broken[1]["errors"]), str(broken))

    # Routed as documented: each route's path and each Ingress host reach
    # the Service of the same pod, which selects exactly that pod, and
    # only the chat server's /ws is routed.
    services = {o["metadata"]["name"]: o for o in by_kind.get("Service", [])}
    problems = []
    for svc in services.values():
        pod = svc["metadata"]["labels"].get("chat.scalechat.dev/pod")
        if svc["spec"]["selector"] != {"statefulset.kubernetes.io/pod-name": pod}:
            problems.append(f"Service {svc['metadata']['name']} does not select exactly pod {pod}")
    for route in routes:
        pod = route["metadata"]["labels"]["chat.scalechat.dev/pod"]
        rule = route["spec"]["rules"][0]
        target = services.get(rule["backendRefs"][0]["name"], {})
        if rule["matches"] != [{"path": {"type": "PathPrefix", "value": f"/{pod}/ws"}}] or \
                rule["filters"][0]["urlRewrite"]["path"] != {"type": "ReplacePrefixMatch",
                                                               "replacePrefixMatch": "/ws"} or \
                target.get("spec", {}).get("selector", {}).get("statefulset.kubernetes.io/pod-name") != pod:
            problems.append(f"HTTPRoute {route['metadata']['name']} does not route /{pod}/ws to /ws on {pod}")
    for ingress in by_kind.get("Ingress", []):
        for rule in ingress["spec"]["rules"]:
            pod = rule["host"].split(".")[0]
            path = rule["http"]["paths"][0]
            target = services.get(path["backend"]["service"]["name"], {})
            if path["path"] != "/ws" or \
                    target.get("spec", {}).get("selector", {}).get("statefulset.kubernetes.io/pod-name") != pod:
                problems.append(f"Ingress rule {rule['host']} does not route /ws to {pod}")
        if ingress["spec"]["tls"][0]["hosts"] != [rule["host"] for rule in ingress["spec"]["rules"]]:
            problems.append("the Ingress's TLS hosts are not its rules' hosts")
    for o in objects:
        if o["metadata"].get("ownerReferences", [{}])[0].get("kind") != "ChatCluster":
            problems.append(f"{o['kind']}/{o['metadata']['name']} is not owned by the ChatCluster")
    r.check("each HTTPRoute path and Ingress host reaches the Service of its own pod (/ws only), every object "
            "owned by the ChatCluster", not problems, "; ".join(problems[:5]))


def check_readme(r: Report, update: bool) -> None:
    """charts/chat/README.md's parameters section equals what the
    maintained generator makes from values.yaml's @param comments."""
    generator = NODE_TOOLS / "node_modules" / ".bin" / "readme-generator"
    readme = CHART / "README.md"
    if not shutil.which("node") or not generator.exists():
        r.unverified("charts/chat/README.md values table matches values.yaml", NODE_TOOLS_MISSING)
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy_path = Path(tmp) / "README.md"
        shutil.copy(readme, copy_path)
        proc = subprocess.run([str(generator), "--values", str(CHART / "values.yaml"), "--readme", str(copy_path)],
                              capture_output=True, text=True, cwd=NODE_TOOLS)
        generated = copy_path.read_text()
    if update and proc.returncode == 0:
        readme.write_text(generated)
    r.check("@bitnami/readme-generator-for-helm reads values.yaml (every value has an @param)",
            proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:])
    r.check("charts/chat/README.md values table matches values.yaml (no drift)",
            proc.returncode == 0 and generated == readme.read_text(),
            "run: python3 scripts/validate-k8s.py --update")


def main() -> int:
    update = "--update" in sys.argv[1:]
    r = Report()
    chart = load_chart()
    results: dict = {}

    def step(name, fn):
        try:
            results[name] = fn()
        except Exception:  # a crash in one section is a failure, not a traceback exit
            r.check(f"{name} checks ran", False, traceback.format_exc())

    step("lint", lambda: check_lint(r))
    step("values", lambda: check_values(r, chart))
    step("crd", lambda: check_crd(r, chart))
    crd = results.get("crd")
    if crd is not None:
        step("cel", lambda: CelRules(crd))
        cel = results.get("cel")
        if cel is not None:
            step("chatclusters", lambda: check_chatclusters(r, crd, cel))
            step("rendering", lambda: check_rendering(r, chart, crd, cel))
    step("monitoring", lambda: check_monitoring(r, chart, results.get("rendering") or [], update))
    step("autoscaling", lambda: check_autoscaling(r, results.get("rendering") or []))
    step("expose", lambda: check_expose_objects(r))
    step("readme", lambda: check_readme(r, update))
    print(f"{r.passed} passed, {r.failed} failed, {r.not_verified} not verified")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())

// Validates prometheus-operator objects (PodMonitor, ServiceMonitor,
// PrometheusRule) against the schemas of the operator's CRDs, as packaged by
// @kubernetes-models/prometheus-operator (generated from those CRDs).
//
// Usage: node validate-monitoring.mjs <objects.json>
//   objects.json: a JSON array of Kubernetes objects.
// Prints one JSON line per object: {"kind", "name", "errors": [...]}.
// Exit status 0 when every object is valid, 1 when one is not, 2 on misuse
// (an unknown kind counts as invalid, so nothing passes unchecked).
//
// The packaged validators do not reject unknown fields (the CRDs allow the
// API server to prune them); scripts/validate-k8s.py says so in its output.
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const MODELS = { PodMonitor, ServiceMonitor, PrometheusRule };

if (process.argv.length !== 3) {
  console.error("usage: node validate-monitoring.mjs <objects.json>");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
let invalid = 0;
for (const obj of objects) {
  const name = obj?.metadata?.name ?? "<no name>";
  const errors = [];
  const Model = MODELS[obj?.kind];
  if (obj?.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    errors.push(`not a monitoring.coreos.com/v1 PodMonitor, ServiceMonitor or PrometheusRule: ${obj?.apiVersion} ${obj?.kind}`);
  } else {
    try {
      new Model(obj).validate();
    } catch (err) {
      errors.push(String(err?.message ?? err));
    }
  }
  if (errors.length) invalid += 1;
  console.log(JSON.stringify({ kind: obj?.kind, name, errors }));
}
process.exit(invalid ? 1 : 0);

// Validates the chart's objects of other projects' CRDs against those CRDs'
// schemas, as packaged by @kubernetes-models (generated from the CRDs):
// prometheus-operator objects (PodMonitor, ServiceMonitor, PrometheusRule;
// @kubernetes-models/prometheus-operator), KEDA's ScaledObject
// (@kubernetes-models/keda) and the operator's Gateway API HTTPRoutes
// (@kubernetes-models/gateway-api), in two passes:
//  1. the package's JSON-schema validators (types, patterns, required
//     fields, enums); they accept unknown fields, as the CRDs let the API
//     server prune them;
//  2. strictly: every object as a TypeScript object literal of the
//     package's interface for its kind, type-checked by tsc, whose excess
//     property check rejects unknown fields at any depth (what kubectl's
//     strict field validation would refuse).
//
// Usage: node validate-monitoring.mjs <objects.json>
//   objects.json: a JSON array of Kubernetes objects.
// Prints one JSON line per object: {"kind", "name", "errors": [...]}.
// Exit status 0 when every object is valid, 1 when one is not, 2 on misuse.
// An unknown kind counts as invalid, so nothing passes unchecked.
import { readFileSync, writeFileSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

// "<apiVersion>/<kind>" -> [model class, module of its interface I<kind>]
const MODELS = {
  "monitoring.coreos.com/v1/PodMonitor": [PodMonitor, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor"],
  "monitoring.coreos.com/v1/ServiceMonitor": [ServiceMonitor, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": [PrometheusRule, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule"],
  "keda.sh/v1alpha1/ScaledObject": [ScaledObject, "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject"],
  "gateway.networking.k8s.io/v1/HTTPRoute": [HTTPRoute, "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute"],
};
const keyOf = (obj) => `${obj?.apiVersion}/${obj?.kind}`;

if (process.argv.length !== 3) {
  console.error("usage: node validate-monitoring.mjs <objects.json>");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const errors = objects.map(() => []);

// 1. JSON-schema validators
objects.forEach((obj, i) => {
  const [Model] = MODELS[keyOf(obj)] ?? [];
  if (!Model) {
    errors[i].push(`not a kind this script knows (${Object.keys(MODELS).join(", ")}): ${obj?.apiVersion} ${obj?.kind}`);
    return;
  }
  try {
    new Model(obj).validate();
  } catch (err) {
    errors[i].push(String(err?.message ?? err));
  }
});

// 2. unknown fields: one typed object literal per line, type-checked
const here = dirname(fileURLToPath(import.meta.url));
const file = join(here, `.strict-check-${process.pid}.ts`);
const keys = Object.keys(MODELS);
const lines = keys.map((k, j) => `import type { I${k.split("/").pop()} as T${j} } from "${MODELS[k][1]}";`);
const firstObjectLine = lines.length;
objects.forEach((obj, i) => {
  const j = keys.indexOf(keyOf(obj));
  const type = j >= 0 ? `T${j}` : "unknown";
  lines.push(`export const o${i}: ${type} = ${JSON.stringify(obj)};`);
});
writeFileSync(file, lines.join("\n") + "\n");
try {
  const program = ts.createProgram([file], {
    noEmit: true,
    strict: true,
    skipLibCheck: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  });
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
    if (d.file && d.file.fileName === file && d.start !== undefined) {
      const { line } = d.file.getLineAndCharacterOfPosition(d.start);
      const i = line - firstObjectLine;
      if (i >= 0 && i < objects.length) {
        errors[i].push(`strict: ${message}`);
        continue;
      }
    }
    // a problem outside the objects (a missing package, a bad import)
    console.error(`validate-monitoring: ${message}`);
    process.exitCode = 2;
  }
} finally {
  unlinkSync(file);
}

let invalid = 0;
objects.forEach((obj, i) => {
  if (errors[i].length) invalid += 1;
  console.log(JSON.stringify({ kind: obj?.kind, name: obj?.metadata?.name ?? "<no name>", errors: errors[i] }));
});
if (process.exitCode !== 2) process.exitCode = invalid ? 1 : 0;

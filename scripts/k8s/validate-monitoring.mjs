// Validates prometheus-operator objects (PodMonitor, ServiceMonitor,
// PrometheusRule) against the schemas of the operator's CRDs, as packaged by
// @kubernetes-models/prometheus-operator (generated from those CRDs), in two
// passes:
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

const MODELS = { PodMonitor, ServiceMonitor, PrometheusRule };

if (process.argv.length !== 3) {
  console.error("usage: node validate-monitoring.mjs <objects.json>");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const errors = objects.map(() => []);

// 1. JSON-schema validators
objects.forEach((obj, i) => {
  const Model = MODELS[obj?.kind];
  if (obj?.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    errors[i].push(`not a monitoring.coreos.com/v1 PodMonitor, ServiceMonitor or PrometheusRule: ${obj?.apiVersion} ${obj?.kind}`);
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
const kinds = Object.keys(MODELS);
const lines = kinds.map(
  (k) => `import type { I${k} } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${k}";`,
);
const firstObjectLine = lines.length;
objects.forEach((obj, i) => {
  const type = MODELS[obj?.kind] ? `I${obj.kind}` : "unknown";
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

// Validate Prometheus Operator objects (a JSON array on stdin) with @kubernetes-models/prometheus-operator.
// Usage: node validate_monitoring.mjs MODELS_DIR < objects.json   (MODELS_DIR from hack/fetch-monitoring-models.sh)
// Prints one line per object ("ok Kind/name" or "invalid Kind/name: why"); exits 1 if any is invalid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = join(process.argv[2], "node_modules", "@kubernetes-models", "prometheus-operator");
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const module = await import(pathToFileURL(join(models, group, version, `${obj.kind}.js`)).href);
  try {
    new module[obj.kind](obj).validate();
    console.log(`ok ${obj.kind}/${obj.metadata.name}`);
  } catch (err) {
    failed += 1;
    console.log(`invalid ${obj.kind}/${obj.metadata.name}: ${err.message}`);
  }
}
process.exit(failed ? 1 : 0);

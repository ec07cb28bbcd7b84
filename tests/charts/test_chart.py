"""The Helm chart, driven by the real helm 3 and helm 4 binaries: lint, render, RBAC, security, schema, and the
monitoring objects' agreement with the generated dashboards and rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kuberl.cli.main import build_parser
from kuberl.monitoring import alerts
from kuberl.monitoring.__main__ import DASHBOARD_DIR
from tests.charts.conftest import CHART, NAMESPACE, REPO, VALUE_SETS, find, run_helm, template_args
from tests.tools import require

HELMS = ("helm3", "helm4")


def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = CHART / "crds" / "kuberl.io_rltrainingjobs.yaml"
    assert chart_crd.read_text() == (REPO / "crds" / "kuberl.io_rltrainingjobs.yaml").read_text(), (
        "charts/kuberl/crds drifted from crds/: run `kuberl crd --write`"
    )


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_strict_passes(helm_binaries: dict[str, Path], helm: str, value_set: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for path in VALUE_SETS[value_set]:
        args += ["-f", str(path)]
    out = run_helm(helm_binaries[helm], *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_template_renders_the_expected_objects(render, helm: str, value_set: str) -> None:
    objects = render(value_set, helm)
    kinds = sorted({o["kind"] for o in objects})
    base = {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "Service"}
    assert base <= set(kinds)
    monitoring = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    if value_set == "default":
        assert not monitoring & set(kinds), "monitoring objects must be opt-in"
        assert not find(objects, "ConfigMap")
    else:
        assert monitoring <= set(kinds)
        assert len(find(objects, "PodMonitor")) == 2  # worker drivers and SGLang engines
        assert len(find(objects, "ConfigMap")) == len(list(DASHBOARD_DIR.glob("*.json")))


def test_helm3_and_helm4_render_the_same_objects(render) -> None:
    for value_set in VALUE_SETS:
        assert render(value_set, "helm3") == render(value_set, "helm4")


def _deployment(objects: list[dict]) -> dict:
    [deployment] = find(objects, "Deployment")
    return deployment


def test_operator_runs_non_root_with_a_read_only_root_and_no_capabilities(render) -> None:
    pod = _deployment(render())["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_image_defaults_to_the_chart_app_version(render) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    [container] = _deployment(render())["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"kuberl/operator:{chart['appVersion']}"


def test_chart_documents_the_kuberay_requirement() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert "KubeRay" in chart["description"] and "KubeRay" in chart["annotations"]["kuberl.io/requires"]


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_deployment_command_is_accepted_by_the_operator_cli(render, value_set: str) -> None:
    """The container runs `kuberl operator ...`; kuberl's own parser must accept exactly those arguments."""
    [container] = _deployment(render(value_set))["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kuberl"]
    parser = build_parser()
    args = parser.parse_args(container["args"])  # exits (SystemExit) on an unknown flag
    assert args.command == "operator"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports["metrics"]
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"  # kopf's liveness endpoint
    values = yaml.safe_load(VALUE_SETS[value_set][0].read_text()) if VALUE_SETS[value_set] else {}
    assert sorted(args.namespaces) == sorted(values.get("watchNamespaces", []))
    kueue = values.get("kueue", {})
    assert args.default_queue_name == (kueue.get("defaultQueueName") or None)
    assert args.default_priority_class == (kueue.get("defaultPriorityClass") or None)
    assert args.worker_image.startswith(values.get("operator", {}).get("workerImage", {}).get(
        "repository", "kuberl/worker") + ":")
    kuberl = shutil.which("kuberl", path=str(REPO / ".venv" / "bin")) or "kuberl"
    help_run = subprocess.run([kuberl, *container["args"], "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr


def _rules(objects: list[dict]) -> list[dict]:
    return [r for kind in ("ClusterRole", "Role") for o in find(objects, kind) for r in o["rules"]]


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(render, value_set: str) -> None:
    rules = _rules(render(value_set))
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert not {"secrets", "pods/exec", "nodes"} & set(rule["resources"]), rule
    grants = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert grants[("kuberl.io", "rltrainingjobs")] == {"get", "list", "watch", "patch"}
    assert grants[("kuberl.io", "rltrainingjobs/status")] == {"get", "patch"}
    assert grants[("ray.io", "rayjobs")] == {"get", "list", "watch", "create", "patch"}
    # Children are written only by server-side apply (PATCH, which creates when absent) and never read.
    for resource in ("configmaps", "serviceaccounts"):
        assert grants[("", resource)] == {"create", "patch"}
    for resource in ("roles", "rolebindings"):
        assert grants[("rbac.authorization.k8s.io", resource)] == {"create", "patch"}
    assert grants[("", "events")] == {"create"}  # kopf.event posts core/v1 Events
    assert grants[("", "pods")] == {"list", "watch"}  # read-only: explains pods that do not start
    assert grants[("apps", "deployments")] == {"list"}  # which namespaces KubeRay watches
    assert grants[("kueue.x-k8s.io", "workloads")] == {"list", "watch", "patch"}  # queue reason; suspend


def test_operator_rbac_covers_the_driver_role_it_creates(render) -> None:
    """RBAC forbids granting what one does not hold: the operator must hold every rule of the driver's Role."""
    from kuberl.api import parse_job
    from kuberl.operator import render as operator_render

    grants = {(g, r): set(rule["verbs"]) for rule in _rules(render())
              for g in rule["apiGroups"] for r in rule["resources"]}
    job = parse_job(yaml.safe_load((REPO / "examples" / "glm4-9b-dapo-math.yaml").read_text()))
    _, role, _ = operator_render.render_driver_rbac(job)
    for rule in role["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                assert set(rule["verbs"]) <= grants.get((g, r), set()), (g, r, rule["verbs"])


def test_watched_namespaces_get_roles_only_there(render) -> None:
    objects = render("feature")
    values = yaml.safe_load(VALUE_SETS["feature"][0].read_text())
    assert sorted(r["metadata"]["namespace"] for r in find(objects, "Role")) == sorted(values["watchNamespaces"])
    assert sorted(b["metadata"]["namespace"] for b in find(objects, "RoleBinding")) == sorted(
        values["watchNamespaces"])
    [cluster_role] = find(objects, "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions", "namespaces", "deployments"}
    assert {v for rule in cluster_role["rules"] for v in rule["verbs"]} == {"list", "watch"}


def test_prometheus_rule_is_the_tested_rule_file(render, tmp_path: Path) -> None:
    [rule] = find(render("feature"), "PrometheusRule")
    assert rule["spec"] == alerts.rule_groups()
    promtool = require("promtool")
    path = tmp_path / "chart-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_configmaps_carry_the_committed_json_for_the_sidecar(render) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["dashboards"]
    maps = find(render("feature"), "ConfigMap")
    seen = {}
    for cm in maps:
        assert cm["metadata"]["labels"][values["label"]] == values["labelValue"]
        assert cm["metadata"]["annotations"][values["folderAnnotation"]] == "RL"
        seen |= cm["data"]
    assert set(seen) == {p.name for p in DASHBOARD_DIR.glob("*.json")}
    for name, text in seen.items():
        assert json.loads(text) == json.loads((DASHBOARD_DIR / name).read_text())


BAD_VALUES = [
    ("replicaCount=2", "replicaCount"),
    ("watchNamespaces[0]=Team_A", "watchNamespaces"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("replicas=1", "replicas"),
    ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
    ("monitoring.workers.podMonitor.interval=15 seconds", "interval"),
    ("operator.metricsPort=70000", "metricsPort"),
]


@pytest.mark.parametrize("helm", HELMS)
@pytest.mark.parametrize(("setting", "field"), BAD_VALUES)
def test_schema_rejects_bad_values_naming_the_field(helm_binaries, helm: str, setting: str, field: str) -> None:
    out = run_helm(helm_binaries[helm], *template_args([], (setting,)))
    assert out.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert field in out.stderr, out.stderr


def _rendered_head_pod() -> dict:
    from kuberl.api import parse_job
    from kuberl.operator.render import render_rayjob

    job = parse_job(yaml.safe_load((REPO / "examples" / "glm4-9b-dapo-math.yaml").read_text()))
    return render_rayjob(job)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]


def test_worker_podmonitor_labels_match_the_rendered_head_pod(render) -> None:
    monitors = {m["metadata"]["name"]: m for m in find(render("feature"), "PodMonitor")}
    selector = monitors["rel-kuberl-workers"]["spec"]["selector"]["matchLabels"]
    labels = _rendered_head_pod()["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_worker_podmonitor_port_is_a_named_port_of_the_rendered_head_pod(render) -> None:
    monitors = {m["metadata"]["name"]: m for m in find(render("feature"), "PodMonitor")}
    port = monitors["rel-kuberl-workers"]["spec"]["podMetricsEndpoints"][0]["port"]
    names = {p["name"] for c in _rendered_head_pod()["spec"]["containers"] for p in c.get("ports", [])}
    assert port in names


@pytest.mark.parametrize("helm", HELMS)
def test_rbac_service_account_and_service_can_be_turned_off(render, helm: str) -> None:
    objects = render("default", helm, ("rbac.create=false", "serviceAccount.create=false",
                                       "serviceAccount.name=platform-operator", "metricsService.enabled=false"))
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount", "Service"}
    assert _deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"


@pytest.fixture(scope="module")
def monitoring_models() -> Path:
    require("node")
    require("npm")
    out = subprocess.run([str(REPO / "hack" / "fetch-monitoring-models.sh")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def _validate_monitoring(models: Path, objects: list[dict]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(REPO / "tests" / "charts" / "validate_monitoring.mjs"), str(models)],
                          input=json.dumps(objects), capture_output=True, text=True, timeout=60)


def test_monitoring_objects_match_the_prometheus_operator_api(render, monitoring_models: Path) -> None:
    """No cluster here has the monitoring.coreos.com CRDs; validate against the operator's generated schemas."""
    objects = [o for o in render("feature") if o["apiVersion"] == "monitoring.coreos.com/v1"]
    assert {o["kind"] for o in objects} == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    out = _validate_monitoring(monitoring_models, objects)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok ") == len(objects)


def test_monitoring_validation_catches_a_bad_object(render, monitoring_models: Path) -> None:
    [monitor] = [o for o in render("feature") if o["kind"] == "ServiceMonitor"]
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["interval"] = "30 seconds"
    out = _validate_monitoring(monitoring_models, [broken])
    assert out.returncode == 1 and "interval" in out.stdout

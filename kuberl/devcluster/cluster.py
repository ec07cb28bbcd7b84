"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake 8×H100 nodes), started from the binaries ``hack/cluster/build.sh``
caches.

Start order matters: the CRDs (KubeRay's and every YAML in ``crds/``) are installed before the
controller manager starts, so its garbage collector knows those types at once instead of after a
~30 s discovery resync. After the first start with a given set of CRDs, etcd starts from a cached
data directory that already holds them (``etcd_template``). All state (PKI, etcd data, logs,
kubeconfig, ``state.json``) lives in one directory; ``stop_cluster`` reads ``state.json``, so any
process can tear a cluster down.
"""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kuberl.devcluster import components, etcd_template, kueue, processes
from kuberl.devcluster.binaries import BUILD_SCRIPT, Binaries, cache_root, find_binaries
from kuberl.devcluster.nodes import h100_nodes
from kuberl.devcluster.pki import Pki, kubeconfig_yaml, pki_paths, write_pki
from kuberl.devcluster.processes import ProcessRecord
from kuberl.errors import ClusterError

log = logging.getLogger(__name__)

REPO_CRDS = Path(__file__).resolve().parents[2] / "crds"
STATE_FILE = "state.json"
KUBERAY_KINDS = ("rayclusters", "rayjobs")  # RayService (1 MB more schema) is unused by kuberl
KUBERAY_NAMESPACE = "kuberay-system"  # the only namespace a real KubeRay operator watches
_STOP_ORDER = ("kueue", "kuberay-operator", "kwok", "kube-scheduler", "kube-controller-manager",
               "kube-apiserver", "etcd")


@dataclass
class ClusterState:
    """Everything needed to use or stop a running cluster; persisted as ``<directory>/state.json``.
    """

    directory: Path
    kubeconfig: Path
    server: str
    bin_dir: Path
    owns_directory: bool
    processes: list[ProcessRecord] = field(default_factory=list)
    kuberay_operator: bool = False
    kueue: bool = False
    die_with_parent: bool = False  # components are SIGKILLed by the kernel when their starter dies

    def save(self) -> None:
        data = {"directory": str(self.directory), "kubeconfig": str(self.kubeconfig),
                "server": self.server, "bin_dir": str(self.bin_dir),
                "owns_directory": self.owns_directory, "kuberay_operator": self.kuberay_operator,
                "kueue": self.kueue,
                "die_with_parent": self.die_with_parent,
                "processes": [p.to_json() for p in self.processes]}
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> ClusterState:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster state at {path}; start one with `kuberl dev cluster up`"
                               " or pass the directory it printed") from None
        return cls(directory=Path(data["directory"]), kubeconfig=Path(data["kubeconfig"]),
                   server=data["server"], bin_dir=Path(data["bin_dir"]),
                   owns_directory=bool(data["owns_directory"]),
                   kuberay_operator=bool(data.get("kuberay_operator")),
                   kueue=bool(data.get("kueue")),
                   die_with_parent=bool(data.get("die_with_parent")),
                   processes=[ProcessRecord(**p) for p in data["processes"]])


class Cluster:
    """A handle on a running (or externally given) cluster: kubeconfig plus kubectl helpers."""

    def __init__(self, kubeconfig: Path, kubectl_binary: str,
                 state: ClusterState | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_binary = kubectl_binary
        self.state = state

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point clients (kubectl, kopf, kubernetes-asyncio) at this
        cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; with ``check`` a failure raises ClusterError with
        stderr."""
        cmd = [self.kubectl_binary, "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, docs: dict[str, Any] | Sequence[dict[str, Any]], *args: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        """Server-side apply of one manifest or a list of them (field manager ``kuberl-dev``)."""
        items = [docs] if isinstance(docs, dict) else list(docs)
        return self.kubectl("apply", "--server-side", "--field-manager=kuberl-dev", "-f", "-",
                            *args, input=yaml.safe_dump_all(items), check=check)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise ClusterError(f"kubectl get {kind} {name} failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)


# --- readiness probes ---------------------------------------------------------------------------


def _wait(what: str, probe: Callable[[], bool], timeout: float,
          watch: Sequence[ProcessRecord] = ()) -> None:
    """Poll ``probe`` until true; fail early when a watched process died, with its log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in watch:
            if not processes.is_running(rec):
                raise ClusterError(f"{rec.name} exited while waiting for {what}; log {rec.log}:\n"
                                   f"{processes.log_tail(rec)}")
        try:
            if probe():
                return
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        time.sleep(0.1)
    tails = "\n".join(f"--- {rec.name} ({rec.log}):\n{processes.log_tail(rec, 10)}"
                      for rec in watch)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def _http_ok(url: str, context: ssl.SSLContext | None = None, expect: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            body = resp.read().decode(errors="replace")
    except urllib.error.URLError:
        return False
    return resp.status == 200 and (expect is None or expect in body)


def _client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return ctx


def _unverified_context() -> ssl.SSLContext:
    """For the self-signed health endpoints of the controller manager and scheduler (loopback only).
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _crds_served(cluster: Cluster) -> bool:
    """Every CRD reports Established=True and its resource answers a list through discovery
    (``kubectl wait`` errors out on a CRD that has no conditions yet, so this polls instead)."""
    proc = cluster.kubectl("get", "crd", "-o", "jsonpath={range .items[*]}{.metadata.name} "
                           '{.status.conditions[?(@.type=="Established")].status}{"\\n"}{end}',
                           check=False, timeout=20)
    if proc.returncode != 0:  # a CRD without any conditions yet cannot be filtered
        return False
    lines = proc.stdout.split("\n")
    pairs = [line.split() for line in lines if line.strip()]
    if not pairs or any(len(p) != 2 or p[1] != "True" for p in pairs):
        return not pairs
    names = ",".join(p[0] for p in pairs)
    listed = cluster.kubectl("get", names, "-A", "-o", "name", check=False, timeout=20)
    return listed.returncode == 0


# --- start and stop -----------------------------------------------------------------------------


def crd_files(extra_dirs: Sequence[Path] = (REPO_CRDS,)) -> list[Path]:
    """Every ``*.yaml`` in ``extra_dirs`` (our own CRDs), in a stable order."""
    return sorted(p for d in extra_dirs if d.is_dir() for p in d.glob("*.y*ml"))


def start_cluster(directory: Path | None = None, *, nodes: int = 2,
                  crd_dirs: Sequence[Path] = (REPO_CRDS,), kuberay_operator: bool = False,
                  kueue_manager: bool = False,
                  timeout: float = 90.0, binaries: Binaries | None = None,
                  remove_on_stop: bool | None = None, die_with_parent: bool = False) -> Cluster:
    """Start a cluster and return its handle once every component is ready and ``nodes`` fake H100
    nodes are Ready. On any failure everything already started is stopped before ClusterError is
    raised.

    Without ``directory`` a temporary one is made and removed on stop (``remove_on_stop``
    overrides). ``die_with_parent`` (for test sessions) makes the kernel kill every component if
    this process dies without stopping them; ``kuberl dev cluster up`` leaves it off so the
    cluster outlives the command. ``kueue_manager`` installs Kueue's CRDs with the others and runs
    its controller manager (``start_kueue``) once everything else is ready."""
    b = binaries or find_binaries()
    if kueue_manager:
        kueue.require_kueue(b)  # before anything starts: fail fast with the build hint
    owns = directory is None if remove_on_stop is None else remove_on_stop
    directory = Path(tempfile.mkdtemp(prefix="kuberl-cluster-")) if directory is None else directory
    if (directory / STATE_FILE).exists():
        old = ClusterState.load(directory)
        if any(processes.is_running(p) for p in old.processes):
            raise ClusterError(f"a cluster is already running from {directory}; stop it with "
                               f"`kuberl dev cluster down --dir {directory}` first")
        shutil.rmtree(directory)  # a crashed cluster's leftovers: stale etcd data and certificates
    directory.mkdir(parents=True, exist_ok=True)
    logs = directory / "logs"
    kubeconfig = directory / "kubeconfig"
    pki = write_pki(directory / "pki")
    etcd_client, etcd_peer, api, kcm, sched = (processes.free_port() for _ in range(5))
    state = ClusterState(directory=directory, kubeconfig=kubeconfig,
                         server=f"https://127.0.0.1:{api}", bin_dir=b.bin_dir, owns_directory=owns,
                         die_with_parent=die_with_parent)
    cluster = Cluster(kubeconfig, b.path("kubectl"), state)

    def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessRecord:
        rec = processes.spawn(name, argv, logs, env, die_with_parent=die_with_parent)
        state.processes.append(rec)
        state.save()  # recorded before waiting, so `down` from elsewhere can always clean up
        return rec

    started = time.monotonic()

    def mark(step: str) -> None:
        log.debug("%5.1f s  %s", time.monotonic() - started, step)

    files = [b.kuberay_crds / f"ray.io_{kind}.yaml" for kind in KUBERAY_KINDS]
    files += crd_files(crd_dirs)
    if kueue_manager:
        files += sorted(b.kueue_crds.glob("*.yaml"))
    template = etcd_template.template_dir(b, files)
    ctx = _client_context(pki)

    def start_storage() -> list[ProcessRecord]:
        etcd = spawn("etcd", components.etcd_argv(b, directory / "etcd", etcd_client, etcd_peer))
        _wait("etcd /health", lambda: _http_ok(f"http://127.0.0.1:{etcd_client}/health",
                                               expect='"health":"true"'), timeout, [etcd])
        mark("etcd ready")
        apiserver = spawn("kube-apiserver",
                          components.apiserver_argv(b, pki, directory / "apiserver",
                                                    etcd_client, api))
        _wait("kube-apiserver /readyz", lambda: _http_ok(f"{state.server}/readyz", ctx), timeout,
              [etcd, apiserver])
        mark("kube-apiserver ready")
        return [etcd, apiserver]

    try:
        kubeconfig.write_text(kubeconfig_yaml(state.server, pki))
        kubeconfig.chmod(0o600)
        if template.is_dir():
            shutil.copytree(template, directory / "etcd")
            watch = start_storage()
        else:
            watch = start_storage()
            if files:
                cluster.kubectl("apply", "--server-side", "--force-conflicts",
                                "--field-manager=kuberl-dev",
                                *(a for f in files for a in ("-f", str(f))), timeout=timeout)
            _wait("CRDs Established and served", lambda: _crds_served(cluster), timeout, watch)
            mark(f"{len(files)} CRDs established (cold; saving an etcd template)")
            for rec in reversed(watch):
                processes.stop(rec)
                state.processes.remove(rec)
            etcd_template.save_template(directory / "etcd", template)
            watch = start_storage()

        # The scheduler, kwok and the fake nodes do not care about CRDs: start them at once.
        watch.append(spawn("kube-scheduler", components.scheduler_argv(
            b, kubeconfig, directory / "scheduler", sched)))
        watch.append(spawn("kwok", components.kwok_argv(b, kubeconfig)))
        if nodes:
            cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(h100_nodes(nodes)))
        _wait("CRDs Established and served", lambda: _crds_served(cluster), timeout, watch)
        mark(f"{len(files)} CRDs served")

        # Only now the controller manager: its garbage collector sees every CRD type from the start.
        watch.append(spawn("kube-controller-manager", components.controller_manager_argv(
            b, pki, kubeconfig, directory / "controller-manager", kcm)))

        unverified = _unverified_context()
        _wait("kube-controller-manager /healthz",
              lambda: _http_ok(f"https://127.0.0.1:{kcm}/healthz", unverified), timeout, watch)
        _wait("kube-scheduler /healthz",
              lambda: _http_ok(f"https://127.0.0.1:{sched}/healthz", unverified), timeout, watch)
        mark("controller manager and scheduler healthy")
        if nodes:
            _wait(f"{nodes} fake H100 node(s) Ready (kwok)", lambda: cluster.kubectl(
                "wait", "--for=condition=Ready", "node", "--all", "--timeout=2s",
                check=False, timeout=10).returncode == 0, timeout, watch)
            mark("nodes Ready")
        # The default ServiceAccount proves the controller manager's controllers are syncing.
        _wait("the default ServiceAccount (controller manager syncing)",
              lambda: cluster.get("serviceaccount", "default", "default") is not None, timeout,
              watch)
        if kuberay_operator:
            start_kuberay_operator(cluster, b, timeout=timeout)
        if kueue_manager:
            start_kueue(cluster, b, timeout=timeout)
    except BaseException:
        stop_cluster(state)
        raise
    state.save()
    log.info("cluster ready in %.1f s (components used %.1f CPU-seconds): KUBECONFIG=%s",
             time.monotonic() - started, sum(processes.cpu_seconds(p) for p in state.processes),
             kubeconfig)
    return cluster


def start_kuberay_operator(cluster: Cluster, binaries: Binaries | None = None, *,
                           namespace: str = KUBERAY_NAMESPACE,
                           timeout: float = 60.0) -> ProcessRecord:
    """Run the real KubeRay operator (v1.5.0), watching only ``namespace`` so it never fights tests
    that play KubeRay by patching RayJob status elsewhere. It also needs the RayService CRD. When
    the cluster was started here, the process joins its state (``stop_cluster`` stops it);
    otherwise the caller stops it with ``processes.stop``."""
    b = binaries or find_binaries()
    operator = b.kuberay_operator
    if operator is None:
        build_log = b.bin_dir.parent / "logs" / "kuberay.log"
        raise ClusterError(f"the KubeRay operator binary was not built (see {build_log}); "
                           "tests can use kuberl.devcluster.KubeRayEmulator instead")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kuberl-dev",
                    "-f", str(b.kuberay_crds / "ray.io_rayservices.yaml"), timeout=timeout)
    _wait("the RayService CRD Established", lambda: _crds_served(cluster), timeout)
    if cluster.get("namespace", namespace) is None:
        cluster.kubectl("create", "namespace", namespace)
    metrics, probe = processes.free_port(), processes.free_port()
    log_dir = (cluster.state.directory if cluster.state else cluster.kubeconfig.parent) / "logs"
    argv = components.kuberay_argv(operator, metrics, probe, namespace)
    env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"}
    rec = processes.spawn("kuberay-operator", argv, log_dir, env=env,
                          die_with_parent=bool(cluster.state and cluster.state.die_with_parent))
    if cluster.state is not None:
        cluster.state.processes.append(rec)
        cluster.state.kuberay_operator = True
        cluster.state.save()
    try:
        _wait("kuberay-operator /readyz", lambda: _http_ok(f"http://127.0.0.1:{probe}/readyz"),
              timeout, [rec])
    except BaseException:
        processes.stop(rec)
        raise
    return rec


def start_kueue(cluster: Cluster, binaries: Binaries | None = None, *,
                timeout: float = 60.0) -> ProcessRecord:
    """Run Kueue's controller manager (v0.17.0, RayJob integration) against ``cluster``, whose CRDs
    must include Kueue's (``start_cluster(kueue_manager=True)`` does both). Webhooks are served on
    loopback and registered by URL; see ``kuberl.devcluster.kueue``. When the cluster was started
    here, the process joins its state (``stop_cluster`` stops it first)."""
    b = binaries or find_binaries()
    if cluster.state is None:
        raise ClusterError("start_kueue needs a cluster started by kuberl (it signs Kueue's webhook "
                           "certificate with the cluster's CA)")
    if cluster.kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode != 0:
        raise ClusterError("Kueue's CRDs are not installed: start the cluster with "
                           "kueue_manager=True (`kuberl dev cluster up --kueue`)")
    rec = kueue.start(cluster, b, pki_paths(cluster.state.directory / "pki"), timeout=timeout)
    cluster.state.processes.append(rec)
    cluster.state.kueue = True
    cluster.state.save()
    return rec


def stop_cluster(state: ClusterState | Path, *, remove: bool | None = None) -> None:
    """Stop every component (by process group, newest first) and remove the directory when the
    cluster created it (``remove`` overrides). Accepts the state or the cluster directory."""
    if isinstance(state, Path):
        state = ClusterState.load(state)
    order = {name: i for i, name in enumerate(_STOP_ORDER)}
    for rec in sorted(state.processes, key=lambda r: order.get(r.name, -1)):
        processes.stop(rec)
    still = [r.name for r in state.processes if processes.is_running(r)]
    if still:
        raise ClusterError(f"could not stop {', '.join(still)} (see {state.directory / 'logs'})")
    if remove if remove is not None else state.owns_directory:
        shutil.rmtree(state.directory, ignore_errors=True)
    elif (state.directory / STATE_FILE).exists():
        (state.directory / STATE_FILE).unlink()


def attach(kubeconfig: Path, binaries: Binaries | None = None) -> Cluster:
    """A handle on a cluster someone else runs (e.g. ``KUBERL_TEST_KUBECONFIG``); stopping it is
    theirs."""
    if not kubeconfig.is_file():
        raise ClusterError(f"kubeconfig {kubeconfig} does not exist")
    if binaries is not None:
        return Cluster(kubeconfig, binaries.path("kubectl"))
    cached = cache_root() / "bin" / "kubectl"
    kubectl = str(cached) if cached.exists() else shutil.which("kubectl")
    if kubectl is None:
        raise ClusterError(f"no kubectl at {cached} or on PATH; run {BUILD_SCRIPT}")
    return Cluster(kubeconfig, kubectl)

"""Command lines of the control-plane components: pure functions of binaries, certificates, paths
and ports.

Flags follow controller-runtime's envtest defaults (see kubernetes-notes.md section 12), bound to
loopback.
"""

from __future__ import annotations

from pathlib import Path

from kuberl.devcluster.binaries import Binaries
from kuberl.devcluster.pki import Pki


def etcd_argv(b: Binaries, data: Path, client: int, peer: int) -> list[str]:
    return [b.path("etcd"), "--name=default", f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true",  # throwaway data: no fsync keeps writes fast on a shared disk
            "--log-level=warn"]


def apiserver_argv(b: Binaries, pki: Pki, cert_dir: Path, etcd: int, port: int) -> list[str]:
    return [b.path("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd}",
            f"--cert-dir={cert_dir}", f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}", f"--client-ca-file={pki.ca_cert}",
            f"--secure-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC",
            "--allow-privileged=true", f"--service-account-issuer=https://127.0.0.1:{port}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            # Pods may be created right after their namespace, before its default ServiceAccount.
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none", "--profiling=false", "--v=1"]


def controller_manager_argv(b: Binaries, pki: Pki, kubeconfig: Path, cert_dir: Path,
                             port: int) -> list[str]:
    return [b.path("kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", f"--service-account-private-key-file={pki.sa_private}",
            f"--root-ca-file={pki.ca_cert}", "--use-service-account-credentials=false",
            f"--secure-port={port}", "--bind-address=127.0.0.1", f"--cert-dir={cert_dir}",
            "--concurrent-gc-syncs=5", "--profiling=false", "--v=1"]


def scheduler_argv(b: Binaries, kubeconfig: Path, cert_dir: Path, port: int) -> list[str]:
    return [b.path("kube-scheduler"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", f"--secure-port={port}", "--bind-address=127.0.0.1",
            f"--cert-dir={cert_dir}", "--profiling=false", "--v=1"]


def kwok_argv(b: Binaries, kubeconfig: Path) -> list[str]:
    return [b.path("kwok"), f"--config={b.kwok_stages}", f"--kubeconfig={kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=",
            "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
            "--cidr=10.244.0.1/16", "--node-ip=10.96.0.1"]


def kuberay_argv(operator: Path, metrics: int, probe: int, namespace: str) -> list[str]:
    return [str(operator), f"--metrics-addr=127.0.0.1:{metrics}",
            f"--health-probe-bind-address=127.0.0.1:{probe}", "--enable-leader-election=false",
            f"--watch-namespace={namespace}", "--log-stdout-encoder=console"]

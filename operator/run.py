"""Run the operator in this process until interrupted (``kuberl operator`` / ``python -m kuberl.operator``)."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf

from kuberl.operator.handlers import register
from kuberl.operator.settings import OperatorConfig

log = logging.getLogger(__name__)


async def serve(config: OperatorConfig, stop_flag: asyncio.Event | None = None) -> None:
    """Watch RLTrainingJobs and their RayJobs in ``config.namespaces`` (all when empty)."""
    if config.kubeconfig:  # kopf's own login reads $KUBECONFIG; keep both clients on one cluster
        os.environ["KUBECONFIG"] = config.kubeconfig
    registry = register(kopf.OperatorRegistry())
    log.info(
        "kuberl operator watching %s; metrics on :%s",
        ", ".join(config.namespaces) or "all namespaces", config.metrics_port or "off",
    )
    await kopf.operator(
        registry=registry,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=True,
        memo=kopf.Memo(config=config),
        liveness_endpoint=config.liveness_endpoint,
        stop_flag=stop_flag,
    )


def run(config: OperatorConfig) -> int:
    """Blocking entry point; returns the exit code."""
    asyncio.run(serve(config))
    return 0

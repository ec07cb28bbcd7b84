"""All trainer ranks seen by the driver as one trainer: the same methods as ``TrainerActor``.

The group places one ``TrainerActor`` per bundle of the trainer placement group, rank 0's node picks the
rendezvous address (its IP and a free port), and every call goes to every rank concurrently: the sample
list is put into the object store once and shared, each backend takes its own data-parallel share, and
rank 0's value is returned once every rank has finished (the first failing rank's error is raised at once
rather than leaving the driver waiting on ranks blocked in a collective).

Methods are plain blocking calls (``group.train_step(samples)``). Each also has ``.remote(...)``, which
makes the same blocking call and returns rank 0's value as an ``ObjectRef``, so ``ActorHandle``-style call
sites (``ray.get(trainer.save.remote(d))``) keep working.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

from kuberl.worker.placement import TrainerRank, plan_ranks
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.trainer_actor import TrainerActor, check_backend_available
from kuberl.worker.weight_sync import SyncSettings, SyncStats

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class _GroupCall(Generic[P, R]):
    """A bound group method: call it, or ``.remote(...)`` for an ObjectRef of the same result."""

    def __init__(self, fn: Callable[P, R]) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._fn(*args, **kwargs)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        import ray

        return ray.put(self._fn(*args, **kwargs))


class group_method(Generic[P, R]):
    """Decorator giving a ``TrainerGroup`` method the ``.remote`` form of an actor method."""

    def __init__(self, fn: Callable[..., R]) -> None:
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return _GroupCall(functools.partial(self._fn, obj))


def _rendezvous_address() -> tuple[str, int]:
    """Run on rank 0's node: its IP and a port free there now (the group binds it moments later)."""
    import ray

    from kuberl.worker.net import free_port

    return ray.util.get_node_ip_address(), free_port()


def _bundle_nodes(placement_group: Any, num_bundles: int) -> list[str]:
    from ray.util import placement_group_table

    table = placement_group_table(placement_group)
    nodes = table.get("bundles_to_node_id") or {}
    return [str(nodes.get(i, "")) for i in range(num_bundles)]


def _check_layout(kind: str, config: Any) -> None:
    """Refuse, before any actor starts, what the backend will refuse (unknown backend, TP on torch)."""
    check_backend_available(kind)
    if kind == "torch" and hasattr(config, "tensor_model_parallel_size"):
        from kuberl.worker.train.torch_backend import check_data_parallel_only

        check_data_parallel_only(config)


class TrainerGroup:
    """The trainer ranks of one job; rank 0 answers for the group."""

    def __init__(self, actors: Sequence[Any], ranks: Sequence[TrainerRank]) -> None:
        self.actors = list(actors)
        self.ranks = list(ranks)

    @property
    def world_size(self) -> int:
        return len(self.actors)

    @classmethod
    def create(
        cls,
        kind: str,
        config: Any,
        placement_group: Any,
        bundles: Sequence[dict[str, float]],
    ) -> TrainerGroup:
        """Start one ``TrainerActor`` per bundle of ``placement_group`` (already ready); returns at once,
        the actors build their backends in the background (``ping`` waits for them)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        _check_layout(kind, config)

        def on(index: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=index)

        ranks = plan_ranks(_bundle_nodes(placement_group, len(bundles)))
        world = len(ranks)
        addr: str | None = None
        port: int | None = None
        if world > 1:
            probe = ray.remote(_rendezvous_address).options(
                scheduling_strategy=on(ranks[0].bundle_index), num_cpus=0
            )
            addr, port = ray.get(probe.remote())
            log.info("%d trainer ranks rendezvous at %s:%d", world, addr, port)
        actor_cls = ray.remote(TrainerActor)
        actors = [
            actor_cls.options(
                scheduling_strategy=on(r.bundle_index),
                num_cpus=bundles[r.bundle_index].get("CPU", 1),
                num_gpus=bundles[r.bundle_index].get("GPU", 0),
            ).remote(kind, config, r.rank, world, addr, port)
            for r in ranks
        ]
        return cls(actors, ranks)

    # ---- fan-out -----------------------------------------------------------------------------------
    def _all(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every rank; return all values in rank order, or raise the first error."""
        import ray

        refs = [getattr(actor, method).remote(*args) for actor in self.actors]
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        values: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            # Raises this rank's error now, not after the others time out in a collective.
            values[rank_of[ready[0]]] = ray.get(ready[0])
        return values

    # ---- TrainerActor's methods --------------------------------------------------------------------
    @group_method
    def compute_logprobs(
        self, samples: Sequence[TrainSample], reference: bool = False
    ) -> list[list[float]]:
        import ray

        shared = ray.put(list(samples))
        return self._all("compute_logprobs", shared, reference)[0]

    @group_method
    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        import ray

        shared = ray.put(list(samples))
        return self._all("train_step", shared)[0]

    @group_method
    def sync_weights(self, urls: list[str], version: str, settings: SyncSettings) -> SyncStats:
        """Every rank walks the (collective) weights; rank 0 sends them and answers."""
        return self._all("sync_weights", urls, version, settings)[0]

    @group_method
    def save(self, directory: str) -> None:
        self._all("save", directory)

    @group_method
    def load(self, directory: str) -> None:
        self._all("load", directory)

    @group_method
    def memory_stats(self, reset: bool = False) -> list[dict[str, Any]]:
        """Every rank's peak memory (``TrainerActor.memory_stats``), in rank order."""
        return self._all("memory_stats", reset)

    @group_method
    def ping(self) -> bool:
        return all(self._all("ping"))

    @group_method
    def weights_digests(self) -> list[str]:
        """Every rank's weight digest, in rank order (all equal while data-parallel replicas agree)."""
        return self._all("weights_digest")

"""The same shards on Ray: one actor per worker, each holding one model replica (one GPU each
when the cluster has GPUs, else one CPU core each), shards as work items, results back in shard
order (``ActorPool.map``) so the driver adds them exactly as a single process would.

Workers load the model and CLT by name from their own Hugging Face cache (the driver's cache
variables are passed on); SAEs travel from the driver as objects, so a worker needs no registry
entry for them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator

from .accumulators import BlockStats

# What a worker needs to find the same weights offline and behave as the driver does: the
# Hugging Face libraries' variables and every qwen-interp setting (docs/settings.md).
PASSED_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "QWEN_INTERP_")


class ShardWorker:
    """A Ray actor body: the shared model once, then shard after shard."""

    def __init__(self, config, device, saes, threads: int | None) -> None:
        import torch

        from . import collect
        if threads:
            torch.set_num_threads(threads)
        self.config = config
        self.session = collect.load_session(config, device=device, saes=saes)
        self.floors: dict = {}  # from this actor's earlier shards (accumulators.floors)

    def compute(self, index: int, first_context: int, contexts):
        from . import accumulators, collect
        stats = collect.shard_stats(self.session, contexts, first_context, self.config,
                                    floors=self.floors)
        self.floors = {name: accumulators.floors(block, self.floors.get(name))
                       for name, block in stats.items()}
        packed = {name: block.packed() for name, block in stats.items()}  # a fraction to send
        return index, first_context, len(contexts), packed


def _compute(actor, item):
    return actor.compute.remote(*item)


def ray_shard_stats(config, shards: Iterable, *, address: str, workers: int | None, device,
                    saes, on_shard=None) -> Iterator:
    """``(index, first context, n contexts, stats)`` per shard, in shard order."""
    def arguments(gpus: bool) -> tuple:
        return (config, None if gpus else "cpu", [sae.to("cpu") for sae in saes],
                None if gpus else 1)
    for result in ordered_actor_map(ShardWorker, arguments, shards, address=address,
                                    workers=workers):
        if on_shard is not None:
            on_shard(result[2] * config.ctx_len)
        index, first_context, n_contexts, packed = result
        yield index, first_context, n_contexts, {
            name: BlockStats.unpacked(block) for name, block in packed.items()}


def ordered_actor_map(worker_class, arguments, items: Iterable, *, address: str,
                      workers: int | None) -> Iterator:
    """``worker.compute(*item)`` for every item, on Ray actors of ``worker_class`` (built with
    ``arguments(cluster_has_gpus)``), results in item order. One actor per GPU when the cluster
    has GPUs, else one per CPU (``workers`` overrides); ``address`` as in ``compute``."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'qwen-interp[ray]'") from None
    env = {key: value for key, value in os.environ.items() if key.startswith(PASSED_PREFIXES)}
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env})
        else:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = workers or max(1, gpus or int(ray.cluster_resources().get("CPU", 1)))
        options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        remote = ray.remote(**options)(worker_class)
        actors = [remote.remote(*arguments(bool(gpus))) for _ in range(n)]
        pool = ActorPool(actors)
        # Bounded: at most two items per actor are in flight or waiting (ActorPool.map would
        # take the whole corpus at once); get_next returns results in submission order.
        todo = (tuple(item) for item in items)
        for item in itertools.islice(todo, 2 * n):
            pool.submit(_compute, item)
        while pool.has_next():
            result = pool.get_next()
            following = next(todo, None)
            if following is not None:
                pool.submit(_compute, following)
            yield result
    finally:
        if started_here:
            ray.shutdown()

"""The Ray engine: per-series work on a Ray Data actor pool, one machine or a cluster.

``pip install 'lungslice[ray]'``. This module imports Ray only inside
:meth:`RayScheduler.map`, so ``import lungslice`` never does.

The pipeline is Ray Data's standard batch-inference pattern: a dataset of
work items (one row per series of the index, so a series is never split)
mapped by a stateful actor pool. Each actor loads the backbone once
(``work.setup()``) and then runs whole series (:func:`~lungslice.features.schedule.run_series`):
it writes the series' cache files itself, atomically, in exactly the layout
and key of the local engine, so a later local run reuses them, and it returns
only the series' manifest row (a few hundred bytes) to the driver.

Failures: a bad series (corrupt file, geometry, no lung field, any
exception) comes back as a ``failed`` row with its reason and the run goes
on. An actor process that dies mid-series (killed, out of memory) is
restarted and the series retried, ``RayOptions.retries`` times (default 1);
a series whose retries are spent is recorded as failed with that reason, and
the run still completes. See docs/scale-out.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lungslice.errors import ConfigError, FeatureError
from lungslice.features.schedule import SeriesJob, SeriesWork, run_series

__all__ = ["RayOptions", "RayScheduler", "ray_options"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs.

    Attributes
    ----------
    address : str or None
        ``None``: start a private Ray instance on this machine for the run
        (stopped afterwards); ``"auto"``: the cluster this machine belongs to
        (``ray start`` ran here); ``"HOST:PORT"``: the head node's GCS address
        (printed by ``ray start --head``). An already initialised Ray (e.g. by
        the caller) is used as it is.
    actors : int or None
        Actors in the pool (each loads the backbone once); None: one per
        ``cpus_per_actor`` CPUs of the cluster (or per ``gpus_per_actor`` GPUs).
    cpus_per_actor : float
        CPUs reserved per actor; its PyTorch intra-op threads.
    gpus_per_actor : float
        GPUs per actor (fractions share a GPU); 0 for CPU inference.
    retries : int
        How often a series is retried after its actor process died.
    num_cpus : int or None
        CPUs of the private local instance (``address=None``); None: all.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    retries: int = 1
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"RayOptions.actors: expected >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"RayOptions.cpus_per_actor: expected > 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise ConfigError(
                f"RayOptions.gpus_per_actor: expected >= 0, got {self.gpus_per_actor}"
            )
        if self.retries < 0:
            raise ConfigError(f"RayOptions.retries: expected >= 0, got {self.retries}")


def ray_options(
    engine: str,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    retries: int = 1,
) -> RayOptions | None:
    """Options from CLI flags: None for the local engine, where Ray flags make no sense.

    Raises
    ------
    ConfigError
        When a Ray flag is given with ``--engine local``, or the engine is unknown.
    """
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine: expected 'local' or 'ray', got {engine!r}")
    if engine == "local":
        given = [
            flag
            for flag, value, default in (
                ("--address", address, None),
                ("--actors", actors, None),
                ("--gpus-per-actor", gpus_per_actor, 0.0),
            )
            if value != default
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} only apply to --engine ray; add --engine ray or drop them"
            )
        return None
    return RayOptions(
        address=address,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        retries=retries,
    )


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and anything else a row may hold."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class _SeriesActor:
    """One actor of the pool: sets the work up once, then runs whole series."""

    def __init__(self, work: SeriesWork, threads: int) -> None:
        import ray
        import torch

        self.threads = max(1, threads)
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        self.work = work
        self.work.setup()
        self.setup_s = time.perf_counter() - t0
        ctx = ray.get_runtime_context()
        self.node_id = str(ctx.get_node_id())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a deprecation notice inside Ray's own property
            self.restarted = bool(ctx.was_current_actor_reconstructed)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        # Ray Data calls this from its own thread; PyTorch's thread setting is per thread.
        torch.set_num_threads(self.threads)
        rows = []
        for text in batch["job"]:
            job = SeriesJob.from_record(json.loads(str(text)))
            row = run_series(self.work, job)
            row["node_id"] = self.node_id
            row["actor_restarted"] = self.restarted
            row["actor_setup_s"] = self.setup_s
            rows.append(json.dumps(row, default=_plain))
        return {"row": rows}


class RayScheduler:
    """Runs series on a Ray Data actor pool (:class:`RayOptions`)."""

    name = "ray"

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        #: Seconds spent connecting to (or starting) Ray in the last :meth:`map`.
        self.connect_s = 0.0
        #: Actors of the last :meth:`map`.
        self.actors = 0

    def _connect(self) -> bool:
        """Initialise Ray unless it is; True when this call started it."""
        try:
            import ray
        except ImportError as err:
            raise FeatureError(
                "--engine ray needs Ray, which is not installed here. Fix: "
                "pip install 'lungslice[ray]' (on every node of the cluster)."
            ) from err
        if ray.is_initialized():
            return False
        opts = self.options
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if opts.address is None:  # a private instance, even where a cluster runs
            kwargs.update(address="local", num_cpus=opts.num_cpus)
        else:
            kwargs["address"] = opts.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise FeatureError(
                f"could not connect to Ray at {opts.address!r}: {err}. Fix: start the cluster "
                "(`ray start --head` on the head node) and pass the address it prints "
                "(HOST:6379) to --address, or 'auto' on a node of the cluster."
            ) from err
        return True

    def _pool_size(self, resources: dict[str, float]) -> tuple[int, float]:
        opts = self.options
        cpus = float(resources.get("CPU", 0.0))
        gpus = float(resources.get("GPU", 0.0))
        per_cpu = min(opts.cpus_per_actor, cpus) if cpus else opts.cpus_per_actor
        if opts.actors is not None:
            return opts.actors, per_cpu
        if opts.gpus_per_actor > 0:
            if gpus < opts.gpus_per_actor:
                raise FeatureError(
                    f"--gpus-per-actor {opts.gpus_per_actor}: the Ray cluster has {gpus:g} "
                    "GPUs. Fix: add GPU nodes or drop --gpus-per-actor."
                )
            return max(1, math.floor(gpus / opts.gpus_per_actor + 1e-9)), per_cpu
        return max(1, math.floor(cpus / per_cpu + 1e-9)), per_cpu

    def map(self, work: SeriesWork, jobs: Sequence[SeriesJob]) -> Iterator[dict[str, Any]]:
        """Yield one manifest row per series as actors finish them (completion order)."""
        if not jobs:
            return
        t0 = time.perf_counter()
        started = self._connect()
        import ray
        import ray.data

        self.connect_s = time.perf_counter() - t0
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.wait_for_min_actors_s)
        try:
            actors, cpus = self._pool_size(ray.cluster_resources())
            actors = min(actors, len(jobs))
            self.actors = actors
            # A series whose actor died more often than `retries` must not end the
            # run: its block is given up, and the series recorded as failed below.
            ctx.max_errored_blocks = len(jobs)
            ctx.enable_progress_bars = False
            # Every actor has loaded its backbone before the first series is handed out,
            # and each holds one series at a time: the series spread over all actors.
            ctx.wait_for_min_actors_s = 1800
            retries = self.options.retries
            log.info(
                "ray: %d series on %d actors (%g CPU, %g GPU each) after %.1f s to connect",
                len(jobs),
                actors,
                cpus,
                self.options.gpus_per_actor,
                self.connect_s,
            )
            ds: Any = ray.data.from_items(
                [{"job": json.dumps(j.to_record())} for j in jobs],
                override_num_blocks=len(jobs),
            )
            with warnings.catch_warnings():
                # max_restarts / max_task_retries have no named parameter yet (Ray 2.60):
                # the extra keyword arguments are still how Ray Data takes them.
                warnings.simplefilter("ignore")
                ds = ds.map_batches(
                    _SeriesActor,
                    fn_constructor_args=(work, max(1, int(cpus))),
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(
                        size=actors, max_tasks_in_flight_per_actor=1
                    ),
                    num_cpus=cpus,
                    num_gpus=self.options.gpus_per_actor or None,
                    max_restarts=retries,
                    max_task_retries=retries,
                )
            seen: set[str] = set()
            for record in ds.iter_rows():
                row = dict(json.loads(str(record["row"])))
                seen.add(str(row["series_uid"]))
                yield row
            for job in jobs:
                if job.series_uid not in seen:
                    yield {
                        **work.failed_row(
                            job,
                            f"the Ray worker computing this series died {retries + 1} time(s) "
                            "(killed, or out of memory?); see the Ray logs of the node. Fix: "
                            "rerun (done series are kept) with more memory per actor "
                            "(fewer --actors per node) or more retries",
                        ),
                        "node_id": "",
                    }
        finally:
            ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved
            if started:
                ray.shutdown()

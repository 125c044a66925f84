"""Prefect task runners for the phases of a generation, built from ``runners:`` of a run
config (:class:`advloop.flows.config.RunnersConfig`).

| kind | task runner | where the tasks run |
| --- | --- | --- |
| ``threads`` | Prefect's ``ThreadPoolTaskRunner`` (the generation flow's own) | threads of the flow process |
| ``processes`` | Prefect's ``ProcessPoolTaskRunner`` | a pool of processes on the flow's machine, started per phase |
| ``dask`` | prefect-dask's ``DaskTaskRunner`` | a running Dask scheduler (``address``), or a ``LocalCluster`` started once per run |
| ``slurm`` | ``DaskTaskRunner`` on a dask-jobqueue ``SLURMCluster`` | Dask workers in Slurm jobs, submitted adaptively |

Clusters that advloop starts itself (a local Dask cluster, a Slurm cluster) live for the
whole run (:func:`open_clusters`): their workers keep their imports between generations and
a Slurm cluster scales its jobs with the work (between ``min_jobs`` and ``max_jobs``); on
exit the local workers stop and the Slurm jobs are cancelled. Their dashboards listen on
127.0.0.1 only (:data:`DASHBOARD`). A Slurm cluster speaks TLS
with credentials of its own (``tls``, the default), which stay in the flow process
(:func:`cluster_security`). A phase then gets a
``DaskTaskRunner`` on the cluster's address (:func:`task_runner`). Without
:func:`open_clusters` (a generation flow called on its own), the runner starts a cluster
of its own for the phase, as prefect-dask does.

Task runs in other processes report to the Prefect API of the flow: an API that only the
flow process can reach (Prefect's temporary local server, or any ``127.0.0.1`` URL) is
refused for Slurm and remote Dask workers (:func:`check_api_reachable`), and shared with
local worker processes (:func:`api_for_workers`), which would otherwise each start a
temporary server of their own.

Worker processes are spawned, so a script of yours that runs the flow with a
``processes`` or local ``dask`` runner needs the ``if __name__ == "__main__":`` guard
(``advloop run`` and Prefect workers have it). Starting a local Dask cluster sets
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` to 1 in the flow
process's environment where they were unset (Dask's nanny does, for its workers).

``python -m advloop.flows.runners CONFIG`` prints the Slurm job script of each Slurm runner of a
config (:func:`slurm_job_script`); it submits nothing and needs no Slurm.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from advloop.flows.config import (
    ConfigError,
    DaskRunner,
    ProcessesRunner,
    RunConfig,
    RunnerSettings,
    SlurmRunner,
    ThreadsRunner,
)
from advloop.flows.validation import load_config

Phase = Literal["training", "labelling"]
PHASES: tuple[Phase, ...] = ("training", "labelling")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}
# The OpenMP/BLAS thread counts a Slurm job exports for its tasks.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: Where the dashboard of a cluster advloop starts listens: this machine only, on a free
#: port (it has no authentication; ":0" would bind it to every interface). The flow's log
#: prints its address; reach it over an SSH tunnel (infra/slurm/README.md).
DASHBOARD = "127.0.0.1:0"

# Credentials of the TLS clusters open in this process, by scheduler address.
_SECURITY: dict[str, object] = {}


class RunnerError(RuntimeError):
    """A runner cannot work as configured (raised before any task is submitted)."""


@dataclass(frozen=True)
class ClusterAddresses:
    """Scheduler addresses of the Dask clusters a run started, per phase (None: the phase
    starts no cluster of the run's: threads, processes, or a Dask ``address`` of its own)."""

    training: str | None = None
    labelling: str | None = None


def local_cluster_kwargs(settings: DaskRunner) -> dict:
    """Keyword arguments of ``distributed.LocalCluster`` for a local ``dask`` runner."""
    kwargs = {
        "n_workers": settings.n_workers or 2,
        "threads_per_worker": settings.threads_per_worker or 1,
        "processes": True,
        "dashboard_address": DASHBOARD,
        "silence_logs": logging.WARNING,
    }
    if settings.memory_limit is not None:
        kwargs["memory_limit"] = settings.memory_limit
    return kwargs


def slurm_cluster_kwargs(
    settings: SlurmRunner, phase: Phase, tls_directory: Path | None = None
) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for a ``slurm`` runner.

    A job holds ``tasks_per_job`` single-threaded Dask workers (Dask's ``cores`` and
    ``processes``) and asks Slurm for ``settings.cores`` CPUs (``job_cpu``), so that each
    task has ``cores / tasks_per_job`` CPUs for its OpenMP threads. With ``settings.tls``
    the cluster makes its own certificate authority (dask-jobqueue's ``security=True``)
    and writes the workers' key and certificate to ``tls_directory``, which the compute
    nodes must see (None: the working directory).
    """
    threads = settings.threads_per_task
    prologue = [f"export {name}={threads}" for name in _THREAD_VARIABLES]
    directives = list(settings.job_extra_directives)
    if settings.gpus:
        directives.append(f"--gres=gpu:{settings.gpus}")
    if settings.log_directory is not None:
        # as dask-jobqueue's log_directory would, without creating the folder when a script
        # is only printed (:func:`_start_cluster` creates it: Slurm would not)
        log = f"{settings.log_directory}/advloop-{phase}-%j"
        directives += [f"--output={log}.out", f"--error={log}.err"]
    kwargs = {
        "cores": settings.tasks_per_job,
        "processes": settings.tasks_per_job,
        "job_cpu": settings.cores,
        "memory": settings.memory,
        "walltime": settings.walltime,
        "account": settings.account,
        "queue": settings.partition,
        "job_name": f"advloop-{phase}",
        "job_script_prologue": [*prologue, *settings.job_script_prologue],
        "job_extra_directives": directives,
        "python": settings.python or sys.executable,
        "local_directory": settings.local_directory,
        "interface": settings.interface,
        "scheduler_options": {"dashboard_address": DASHBOARD},
    }
    if settings.tls:
        kwargs.update(
            security=True, shared_temp_directory=str(tls_directory) if tls_directory else None
        )
    return {k: v for k, v in kwargs.items() if v is not None}


def slurm_adapt_kwargs(settings: SlurmRunner) -> dict:
    """Keyword arguments of ``SLURMCluster.adapt``: the jobs to keep between."""
    return {"minimum_jobs": settings.min_jobs, "maximum_jobs": settings.max_jobs}


def task_runner(settings: RunnerSettings, phase: Phase, address: str | None = None) -> TaskRunner:
    """The Prefect task runner for one phase. ``address``: the scheduler of a cluster the
    run started for this phase (:func:`open_clusters`); without it a ``dask`` runner with
    no ``address`` of its own and a ``slurm`` runner start a cluster for the phase."""
    if isinstance(settings, ThreadsRunner):
        return ThreadPoolTaskRunner()
    if isinstance(settings, ProcessesRunner):
        return ProcessPoolTaskRunner(max_workers=settings.max_workers)
    from prefect_dask import DaskTaskRunner

    address = getattr(settings, "address", None) or address
    if address is not None:
        security = _SECURITY.get(address)
        return DaskTaskRunner(
            address=address, client_kwargs={"security": security} if security is not None else None
        )
    if isinstance(settings, DaskRunner):
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(settings)
        )
    return DaskTaskRunner(
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs=slurm_cluster_kwargs(settings, phase),
        adapt_kwargs=slurm_adapt_kwargs(settings),
    )


def _start_cluster(settings: RunnerSettings, phase: Phase, tls_directory: Path):
    """A Dask cluster object for ``settings`` (the caller closes it), or None for runners
    that need none of the run's. A Slurm cluster with TLS writes its workers' key and
    certificate to ``tls_directory`` (created, private to the user)."""
    if isinstance(settings, DaskRunner) and settings.address is None:
        from distributed import LocalCluster

        return LocalCluster(**local_cluster_kwargs(settings))
    if isinstance(settings, SlurmRunner):
        from dask_jobqueue import SLURMCluster

        if settings.log_directory is not None:
            Path(settings.log_directory).mkdir(parents=True, exist_ok=True)
        if settings.tls:
            tls_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cluster = SLURMCluster(**slurm_cluster_kwargs(settings, phase, tls_directory))
        cluster.adapt(**slurm_adapt_kwargs(settings))
        return cluster
    return None


def _api_url() -> str | None:
    value = PREFECT_API_URL.value()
    return str(value) if value else None


def check_api_reachable(config: RunConfig, api_url: str | None = None) -> None:
    """Raise :class:`RunnerError` if a runner's workers run on other machines (Slurm, a
    Dask scheduler elsewhere) while the Prefect API is one only this machine can reach
    (``api_url``, default the current ``PREFECT_API_URL``; None: Prefect's temporary
    local server)."""
    url = api_url if api_url is not None else _api_url()
    host = urlparse(url).hostname if url else None
    if host is not None and host not in _LOOPBACK:
        return
    for phase in PHASES:
        settings = getattr(config.runners, phase)
        remote = isinstance(settings, SlurmRunner) or (
            isinstance(settings, DaskRunner)
            and settings.address is not None
            and (
                urlparse(
                    settings.address if "://" in settings.address else f"tcp://{settings.address}"
                ).hostname
                or ""
            )
            not in _LOOPBACK
        )
        if remote:
            where = f"the Prefect API at {url}" if url else "Prefect's temporary local server"
            raise RunnerError(
                f"runners.{phase} ({settings.kind}) runs tasks on other machines, which report "
                f"to the Prefect API, but {where} is reachable from this machine only. Start a "
                "server the compute nodes can reach (prefect server start --host 0.0.0.0) and "
                "export PREFECT_API_URL=http://<this host>:4200/api before running "
                "(infra/slurm/README.md)"
            )


@contextmanager
def open_clusters(config: RunConfig) -> Iterator[ClusterAddresses]:
    """Start the Dask clusters the config's runners need, for the length of a run, and
    yield their scheduler addresses; on exit stop them (Slurm jobs are cancelled).

    Raises :class:`RunnerError` first if remote workers could not reach the Prefect API.
    """
    check_api_reachable(config)
    with ExitStack() as stack:
        addresses = {}
        for phase in PHASES:
            cluster = _start_cluster(
                getattr(config.runners, phase), phase, config.run_dir() / ".dask-tls"
            )
            if cluster is not None:
                stack.enter_context(cluster)
                addresses[phase] = address = cluster.scheduler_address
                stack.enter_context(cluster_security(address, cluster.security))
        yield ClusterAddresses(**addresses)


@contextmanager
def cluster_security(address: str, security) -> Iterator[None]:
    """Within the context, task runners for the scheduler at ``address`` connect with
    ``security`` (a ``distributed.Security``; needed for a ``tls://`` scheduler). The
    credentials stay in this process: flow parameters, which the Prefect server stores,
    carry only the address."""
    _SECURITY[address] = security
    try:
        yield
    finally:
        _SECURITY.pop(address, None)


@contextmanager
def api_for_workers() -> Iterator[None]:
    """Make the Prefect API of this process the one that task runs in worker processes
    report to: with Prefect's temporary local server, its URL goes into the settings that
    task runners pass to their workers (which would otherwise start a server each)."""
    if _api_url() is not None:
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def slurm_job_script(settings: SlurmRunner, phase: Phase = "labelling") -> str:
    """The job script a ``slurm`` runner submits for each of its jobs (the scheduler
    address and the TLS files in it are a placeholder's: a real run's differ). Needs no
    Slurm."""
    from dask_jobqueue import SLURMCluster

    with tempfile.TemporaryDirectory(prefix="advloop-dask-tls-") as tls:
        cluster = SLURMCluster(**slurm_cluster_kwargs(settings, phase, Path(tls)))
        try:
            return cluster.job_script()
        finally:
            cluster.close()
            del cluster  # its open TLS files are deleted with it, before their folder


def main(argv: list[str] | None = None) -> int:
    """``python -m advloop.flows.runners CONFIG [--phase P]``: print the Slurm job scripts."""
    parser = argparse.ArgumentParser(
        description="Print the Slurm job script of each Slurm "
        "runner of a run config (submits nothing)."
    )
    parser.add_argument("config", help="a run config (YAML)")
    parser.add_argument("--phase", choices=PHASES, help="only this phase's runner")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    phases = [args.phase] if args.phase else list(PHASES)
    slurm = [p for p in phases if isinstance(getattr(config.runners, p), SlurmRunner)]
    if not slurm:
        print(
            f"{args.config}: no Slurm runner for {' or '.join(phases)} "
            f"(runners: {', '.join(f'{p}: {getattr(config.runners, p).kind}' for p in PHASES)})",
            file=sys.stderr,
        )
        return 1
    for phase in slurm:
        settings = getattr(config.runners, phase)
        print(
            f"# runners.{phase}: the script of each job ({settings.min_jobs} to "
            f"{settings.max_jobs} at once)"
        )
        print(slurm_job_script(settings, phase))
    return 0


if __name__ == "__main__":
    sys.exit(main())

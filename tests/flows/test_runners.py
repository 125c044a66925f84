"""Task runners from the config (flows/runners.py): the labels of a generation fanned out
over a local Dask cluster (and a process pool) equal those of the default thread runner;
the Slurm job script of infra/slurm/example.yaml carries its settings; bad runner
settings are refused with messages that say what to fix."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.io import read

from advloop.adversarial.structures import Candidates
from advloop.calculators.label_store import LabelStore
from advloop.flows.config import ConfigError, RunConfig, SlurmRunner
from advloop.flows.report import GenerationTable
from advloop.flows.run_folder import RunLayout, write_candidates
from advloop.flows.validation import load_config, validate_config
from advloop.potentials.training import resolve_device

ROOT = Path(__file__).resolve().parents[2]
SLURM_EXAMPLE = ROOT / "infra" / "slurm" / "example.yaml"
NH3 = ROOT / "examples" / "structures" / "nh3.xyz"
N_CANDIDATES = 6


def _config(tmp_path: Path, name: str, runners: dict | None = None, **compute) -> RunConfig:
    """A tiny run with cheap GFN2-xTB labels and generation 0's candidates on disk
    (NH3 displaced at random), as exploration would have left them."""
    config = RunConfig.model_validate(
        {
            "system": {"name": name, "structures": str(NH3)},
            "labels": {"kind": "tblite"},
            "compute": {"label_workers": 2, "label_retries": 0, **compute},
            "runners": runners or {},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    rng = np.random.default_rng(7)
    frames = []
    for _ in range(N_CANDIDATES):
        atoms = read(str(NH3))
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(atoms)
    n = N_CANDIDATES
    write_candidates(
        RunLayout(config.run_dir()),
        0,
        Candidates.from_atoms(
            frames, np.arange(n) % 2, np.full(n, 0.1), np.full(n, 0.2), np.ones(n)
        ),
        {},
    )
    return config


def _label(config: RunConfig, selected: list[int], clusters=None, clock: list | None = None):
    """Generation 0's ``selected`` candidates labelled as the flow labels them, on the
    config's labelling runner (inside a flow run); the intervals go to ``clock``."""
    from advloop.flows.active_learning import PrefectJobs

    jobs = PrefectJobs(GenerationTable(io.StringIO()), clusters)
    results = jobs._label(config, 0, selected)
    if clock is not None:
        clock.extend(jobs.clock)
    return results


def _stored(config: RunConfig, results) -> list:
    store = LabelStore(RunLayout(config.run_dir()).labels)
    return [store.get(r.key) for r in sorted(results, key=lambda r: r.index)]


def _same_labels(a: RunConfig, results_a, b: RunConfig, results_b) -> None:
    assert [r.index for r in sorted(results_a, key=lambda r: r.index)] == list(range(N_CANDIDATES))
    assert sorted((r.index, r.key, r.ok) for r in results_a) == sorted(
        (r.index, r.key, r.ok) for r in results_b
    )
    for x, y in zip(_stored(a, results_a), _stored(b, results_b)):
        assert x.error is None and y.error is None
        assert abs(x.energy - y.energy) <= 1e-10
        np.testing.assert_allclose(x.forces, y.forces, rtol=0, atol=1e-10)


def _subflow_task_runs(flow_run_name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter

    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name]))
        )
        assert run.state.is_completed()
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [run.id]}), task_run_filter=TaskRunFilter()
        )


def test_labels_on_a_local_dask_cluster_equal_the_thread_runners(prefect_backend, tmp_path):
    """Both through the generation's labelling step as run_generation calls it: in the
    generation flow's threads, and in a sub-flow on a 2-worker Dask cluster that the run
    started (advloop.flows.runners.open_clusters)."""
    from distributed import Client, get_task_stream
    from prefect import flow

    from advloop.flows import runners

    threads = _config(tmp_path / "threads", "nh3-threads")
    dask = _config(
        tmp_path / "dask",
        "nh3-dask",
        runners={"labelling": {"kind": "dask", "n_workers": 2, "threads_per_worker": 1}},
    )
    selected = list(range(N_CANDIDATES))

    @flow
    def generation():
        clock_t, clock_d = [], []
        by_threads = _label(threads, selected, clock=clock_t)
        with runners.open_clusters(dask) as clusters:
            assert clusters.training is None and clusters.labelling is not None
            with Client(clusters.labelling) as client:
                assert len(client.scheduler_info()["workers"]) == 2
                with get_task_stream(client) as stream:  # read when the block ends
                    by_dask = _label(dask, selected, clusters, clock_d)
                workers = {t["worker"] for t in stream.data}
        return by_threads, by_dask, clock_t, clock_d, workers

    by_threads, by_dask, clock_t, clock_d, workers = generation()
    _same_labels(threads, by_threads, dask, by_dask)
    assert len(workers) == 2  # the labels fanned out over both workers
    assert len(clock_d) == N_CANDIDATES and {c.phase for c in clock_d} == {"labelling"}
    # a sub-flow of its own with one task run per label, on the test's Prefect server
    task_runs = _subflow_task_runs("nh3-dask-gen000-labelling")
    assert len(task_runs) == N_CANDIDATES and all(t.state.is_completed() for t in task_runs)


def test_labels_over_tls_need_the_runs_credentials(prefect_backend, tmp_path):
    """A Dask cluster that speaks only TLS, with a certificate authority of its own (as a
    ``slurm`` runner's does; here a local one, since there is no Slurm): the labelling
    sub-flow reaches it with the credentials the run registered for its address
    (advloop.flows.runners.cluster_security), and a client without them cannot connect."""
    from distributed import Client, LocalCluster
    from distributed.security import Security
    from prefect import flow

    from advloop.flows import runners

    config = _config(tmp_path, "nh3-tls", runners={"labelling": {"kind": "dask", "n_workers": 1}})
    selected = list(range(N_CANDIDATES))
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=True,
        protocol="tls://",
        security=Security.temporary(),
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with pytest.raises(Exception, match="(?i)tls|ssl"):  # no credentials: no connection
            Client(address, timeout=5)

        @flow
        def generation():
            return _label(config, selected, runners.ClusterAddresses(labelling=address))

        with runners.cluster_security(address, cluster.security):
            results = generation()
        assert runners._SECURITY == {}  # the credentials leave with the context
    assert sorted(r.index for r in results) == selected and all(r.ok for r in results)
    assert len(_subflow_task_runs("nh3-tls-gen000-labelling")) == N_CANDIDATES


def test_slurm_cluster_with_tls_keeps_worker_keys_private(tmp_path):
    """A slurm runner's cluster (built without submitting a job: min_jobs 0) makes its own
    certificate authority; the workers' key and certificate land in the run's TLS folder,
    readable by the user only, and the job script points at them without holding them."""
    from advloop.flows.runners import _start_cluster, slurm_job_script

    settings = validate_config(SLURM_EXAMPLE, run_folder=False).runners.labelling
    assert settings.tls and settings.min_jobs == 0
    tls = tmp_path / "run" / ".dask-tls"
    cluster = _start_cluster(settings.model_copy(update={"log_directory": None}), "labelling", tls)
    try:
        assert cluster.scheduler_address.startswith("tls://")
        files = sorted(tls.iterdir())
        assert len(files) == 3 and (tls.stat().st_mode & 0o777) == 0o700
        assert all((f.stat().st_mode & 0o777) == 0o600 for f in files)
        script = cluster.job_script()
        assert "PRIVATE KEY" not in script and "PRIVATE KEY" in "".join(
            f.read_text() for f in files
        )
        worker = script.splitlines()[-1]
        for option in ("--tls-ca-file", "--tls-cert", "--tls-key"):
            assert f"{option} {tls}/" in worker, (option, worker)
    finally:
        cluster.close()
    plain = slurm_job_script(settings.model_copy(update={"tls": False}), "labelling")
    assert "tls" not in plain.splitlines()[-1]


def _listening_hosts(port: int) -> set[str]:
    """The addresses this process listens on at TCP ``port``."""
    import psutil  # a dependency of distributed

    return {
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


@pytest.mark.parametrize("kind", ["dask", "slurm"])
def test_a_clusters_dashboard_listens_on_this_machine_only(kind, tmp_path):
    """The Dask dashboard of the cluster a run starts (a local one; a Slurm one, whose
    scheduler runs in the flow process: built without submitting a job) has no
    authentication, so it binds to 127.0.0.1 only (reach it over an SSH tunnel,
    infra/slurm/README.md), never to every interface."""
    from advloop.flows.config import DaskRunner
    from advloop.flows.runners import _start_cluster

    if kind == "dask":
        settings = DaskRunner(kind="dask", n_workers=1)
    else:
        settings = validate_config(SLURM_EXAMPLE, run_folder=False).runners.labelling
        settings = settings.model_copy(update={"log_directory": None, "min_jobs": 0})
    cluster = _start_cluster(settings, "labelling", tmp_path / ".dask-tls")
    try:
        port = cluster.scheduler_info["services"]["dashboard"]
        assert _listening_hosts(port) == {"127.0.0.1"}
        # the link the flow's log prints names the port (a Slurm cluster's, the host of
        # its scheduler: tunnel to that port on the flow's machine)
        assert f":{port}/status" in cluster.dashboard_link
    finally:
        cluster.close()


def test_labels_in_a_process_pool_equal_the_thread_runners(prefect_backend, tmp_path):
    from prefect import flow

    threads = _config(tmp_path / "threads", "nh3-threads-pool")
    pool = _config(
        tmp_path / "pool",
        "nh3-pool",
        runners={"labelling": {"kind": "processes", "max_workers": 2}},
    )

    @flow
    def generation():
        return (_label(threads, list(range(N_CANDIDATES))), _label(pool, list(range(N_CANDIDATES))))

    by_threads, by_pool = generation()
    _same_labels(threads, by_threads, pool, by_pool)
    assert len(_subflow_task_runs("nh3-pool-gen000-labelling")) == N_CANDIDATES


def test_slurm_job_script_of_the_example_config():
    from advloop.flows.runners import slurm_cluster_kwargs, slurm_job_script

    config = validate_config(SLURM_EXAMPLE, run_folder=False)
    raw = yaml.safe_load(SLURM_EXAMPLE.read_text())["runners"]
    for phase in ("training", "labelling"):
        settings = getattr(config.runners, phase)
        given = raw[phase]
        assert isinstance(settings, SlurmRunner)
        script = slurm_job_script(settings, phase)
        lines = script.splitlines()
        gib = int(given["memory"].removesuffix("GiB"))
        threads = given["cores"] // given["tasks_per_job"]
        for line in (
            f"#SBATCH --cpus-per-task={given['cores']}",
            f"#SBATCH --mem={gib}G",
            f"#SBATCH -t {given['walltime']}",
            f"#SBATCH -A {given['account']}",
            f"#SBATCH -p {given['partition']}",
            f"#SBATCH -J advloop-{phase}",
            f"export OMP_NUM_THREADS={threads}",
            f"export MKL_NUM_THREADS={threads}",
            *given["job_script_prologue"],
            *[f"#SBATCH {d}" for d in given["job_extra_directives"]],
        ):
            assert line in lines, (line, script)
        # thread settings first, so that the prologue's own lines can override them
        assert lines.index(f"export OMP_NUM_THREADS={threads}") < lines.index(
            given["job_script_prologue"][0]
        )
        log = f"{given['log_directory']}/advloop-{phase}-%j"
        assert f"#SBATCH --output={log}.out" in lines and f"#SBATCH --error={log}.err" in lines
        # the GPU directive only where GPUs are asked for (the training jobs)
        assert ("#SBATCH --gres=gpu:1" in lines) == (phase == "training")
        # one single-threaded Dask worker per task, tasks_per_job of them per job
        worker = lines[-1]
        assert "distributed.cli.dask_worker" in worker and "--nthreads 1" in worker
        assert f"--nworkers {given['tasks_per_job']}" in worker
        assert "--memory-limit 8.00GiB" in worker  # memory / tasks_per_job
        assert slurm_cluster_kwargs(settings, phase)["job_cpu"] == given["cores"]


def test_slurm_script_command_line(capsys, tmp_path, monkeypatch):
    from advloop.flows.runners import main

    monkeypatch.chdir(tmp_path)
    assert main([str(SLURM_EXAMPLE), "--phase", "labelling"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# runners.labelling: the script of each job (0 to 4 at once)")
    assert "#SBATCH --cpus-per-task=32" in out and "advloop-training" not in out
    assert not (tmp_path / "logs").exists()  # the log folder is made when jobs are submitted
    assert main([str(ROOT / "examples" / "ammonia.yaml")]) == 1
    assert "no Slurm runner" in capsys.readouterr().err


def _problems(tmp_path: Path, runners: dict) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"system": {"name": "x", "structures": str(NH3)}, "runners": runners})
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


SLURM = {"kind": "slurm", "cores": 8, "memory": "16GB", "walltime": "01:00:00"}


@pytest.mark.parametrize(
    ("runners", "expected"),
    [
        (
            {"labelling": {"kind": "gpu"}},
            "runners.labelling: unknown kind 'gpu'; use one of threads, processes, dask, slurm",
        ),
        ({"training": "mpi"}, "runners.training: unknown kind 'mpi'"),
        ({"labelling": {"n_workers": 2}}, "runners.labelling: say which runner with kind"),
        (
            {"labelling": {**SLURM, "cores": -4}},
            "runners.labelling.cores: Input should be greater than or equal to 1 (got -4)",
        ),
        (
            {"labelling": {**SLURM, "min_jobs": 5, "max_jobs": 2}},
            "min_jobs (5) is above max_jobs (2): adaptive scaling needs min_jobs <= max_jobs",
        ),
        (
            {"labelling": {**SLURM, "tasks_per_job": 3}},
            "cores (8) must be a multiple of tasks_per_job (3)",
        ),
        ({"labelling": {**SLURM, "memory": "lots"}}, "memory 'lots' must be a size such as '32GB'"),
        ({"labelling": {**SLURM, "walltime": 7200}}, "walltime must be quoted"),
        ({"labelling": {**SLURM, "walltime": "2h"}}, "walltime '2h' must be Slurm's HH:MM:SS"),
        (
            {"training": {**SLURM, "job_extra_directives": ["#SBATCH --gres=gpu:1"]}},
            "must be options only ('--gres=gpu:1'), without '#SBATCH'",
        ),
        ({"training": {**SLURM, "gpus": -1}}, "runners.training.gpus: Input should be greater"),
        ({"training": {**SLURM, "queue": "gpu"}}, "runners.training.queue: unknown key"),
        (
            {"labelling": {"kind": "dask", "address": "tcp://10.0.0.5:8786", "n_workers": 4}},
            "address connects to a running Dask cluster; n_workers size a local one",
        ),
        (
            {"labelling": {"kind": "dask", "address": "somewhere"}},
            "is not a Dask scheduler address",
        ),
        (
            {"labelling": {"kind": "processes", "max_workers": 0}},
            "runners.labelling.max_workers: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_runner_settings_are_refused(tmp_path, runners, expected):
    problems = _problems(tmp_path, runners)
    assert len(problems) == 1 and expected in problems[0], problems


def test_runner_defaults_and_shorthand(tmp_path):
    config = RunConfig.model_validate({"system": {"name": "x", "structures": str(NH3)}})
    assert config.runners.training.kind == config.runners.labelling.kind == "threads"
    assert config.compute.device == "auto"
    config = RunConfig.model_validate(
        {
            "system": {"name": "x", "structures": str(NH3)},
            "runners": {"labelling": "processes", "training": "dask"},
        }
    )
    assert config.runners.labelling.kind == "processes" and config.runners.training.kind == "dask"
    again = RunConfig.model_validate(yaml.safe_load(config.to_yaml()))
    assert again == config


def test_remote_workers_need_a_reachable_prefect_api():
    from advloop.flows.runners import RunnerError, check_api_reachable

    slurm = RunConfig.model_validate(
        {"system": {"name": "x", "structures": str(NH3)}, "runners": {"labelling": SLURM}}
    )
    for url in ("", "http://127.0.0.1:4200/api", "http://localhost:4200/api"):
        with pytest.raises(
            RunnerError,
            match="runners.labelling .slurm. runs tasks on other machines.*PREFECT_API_URL",
        ):
            check_api_reachable(slurm, url)
    check_api_reachable(slurm, "http://login1.cluster:4200/api")
    remote = RunConfig.model_validate(
        {
            "system": {"name": "x", "structures": str(NH3)},
            "runners": {"training": {"kind": "dask", "address": "tcp://10.0.0.5:8786"}},
        }
    )
    with pytest.raises(RunnerError, match="runners.training .dask."):
        check_api_reachable(remote, "")
    local = RunConfig.model_validate(
        {
            "system": {"name": "x", "structures": str(NH3)},
            "runners": {"training": {"kind": "dask", "n_workers": 2}},
        }
    )
    check_api_reachable(local, "")  # local workers reach the flow's own server


def test_training_device_choice(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(RuntimeError, match="compute.device is 'cuda' but torch sees no GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError):
        resolve_device("gpu")  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_run_with_members_on_dask_and_labels_in_processes(prefect_backend, tiny_config):
    """The whole loop with each phase on its own runner: the members train on a local Dask
    cluster the run starts, the labels in a process pool, each phase in a sub-flow of its
    generation; the run gives the dataset the default threads give (bit for bit here: the
    same seeds, one thread each)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from advloop.flows.active_learning import run_active_learning
    from advloop.potentials.dataset import Dataset

    tiny = validate_config(tiny_config)
    # names of their own: other tests count the flow runs and artifacts of nh3-tiny
    base = tiny.model_copy(
        update={"system": tiny.system.model_copy(update={"name": "nh3-threads-ref"})}
    )
    spread = base.model_copy(
        update={
            "system": base.system.model_copy(update={"name": "nh3-spread"}),
            "compute": base.compute.model_copy(update={"label_workers": 2}),
            "runners": base.runners.model_validate(
                {
                    "training": {"kind": "dask", "n_workers": 2},
                    "labelling": {"kind": "processes", "max_workers": 2},
                }
            ),
        }
    )
    summary = run_active_learning(spread, GenerationTable(io.StringIO()))
    reference = run_active_learning(base, GenerationTable(io.StringIO()))
    assert summary["stop_reason"] == reference["stop_reason"] == "max_generations"
    assert summary["labels_explored"] == reference["labels_explored"] >= 1

    with get_client(sync_client=True) as client:
        runs = {
            r.name: r
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["nh3-spread"]))
            )
        }
    assert set(runs) == {
        "nh3-spread",
        "nh3-spread-initial-labelling",
        "nh3-spread-gen000",
        "nh3-spread-gen000-training",
        "nh3-spread-gen000-labelling",
        "nh3-spread-gen001",
        "nh3-spread-gen001-training",
    }
    assert all(r.state.is_completed() for r in runs.values())
    assert len(_subflow_task_runs("nh3-spread-gen000-training")) == base.committee.n_members
    assert len(_subflow_task_runs("nh3-spread-gen000-labelling")) == summary["labels_explored"]
    assert len(_subflow_task_runs("nh3-spread-initial-labelling")) == summary["labels_initial"]

    ours = Dataset(RunLayout(spread.run_dir()).dataset).arrays()
    theirs = Dataset(RunLayout(base.run_dir()).dataset).arrays()
    np.testing.assert_allclose(ours.positions, theirs.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.energy, theirs.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.forces, theirs.forces, rtol=0, atol=1e-10)
    records = [
        json.loads(line)
        for line in RunLayout(spread.run_dir()).generations.read_text().splitlines()
    ]
    assert records[0]["seconds_training"] > 0 and records[0]["seconds_labelling"] > 0


def test_a_runner_whose_packages_are_missing_is_reported(monkeypatch):
    import importlib.util

    from advloop.flows.inputs import check_inputs

    config = validate_config(SLURM_EXAMPLE, run_folder=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "dask_jobqueue" else real(name, *a),
    )
    assert check_inputs(config) == [
        f"runners.{phase}: kind slurm needs dask_jobqueue, not installed: "
        "pip install 'advloop[cluster]'"
        for phase in ("training", "labelling")
    ]


def test_slurm_script_command_prints_the_job_script_or_says_there_is_none():
    from typer.testing import CliRunner

    from advloop.flows.cli import app

    infra = Path(__file__).resolve().parents[2] / "infra" / "slurm" / "example.yaml"
    shown = CliRunner().invoke(app, ["slurm-script", str(infra), "--phase", "labelling"])
    assert shown.exit_code == 0, shown.output
    assert "#SBATCH" in shown.output and "advloop-labelling" in shown.output
    ammonia = Path(__file__).resolve().parents[2] / "examples" / "ammonia.yaml"
    none = CliRunner().invoke(app, ["slurm-script", str(ammonia)])
    assert none.exit_code == 1 and "no Slurm runner" in none.output

"""`advloop status` on run folders made by hand: the list of runs, one run's generations
and outcome, and the errors for an unknown run or a missing server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advloop.flows.cli import app

RECORDS = [
    {
        "generation": 0,
        "dataset_size": 14,
        "labels_added": 2,
        "labels_failed": 0,
        "attack_sigma_f_mean": 0.4321,
        "attack_sigma_f_max": 0.9,
        "train_val_forces_mae": 0.2468,
        "seconds": 12.0,
    },
    {
        "generation": 1,
        "dataset_size": 16,
        "labels_added": 2,
        "labels_failed": 1,
        "attack_sigma_f_mean": 0.1357,
        "attack_sigma_f_max": 0.3,
        "train_val_forces_mae": 0.1122,
        "seconds": 15.0,
    },
    {
        "generation": 2,
        "dataset_size": 16,
        "attack_sigma_f_mean": 0.0123,
        "train_val_forces_mae": 0.0987,
        "seconds": 9.0,
    },
]
SUMMARY = {
    "system": "ammonia",
    "stop_reason": "converged",
    "stop_explanation": "converged: the attacked geometries' mean force uncertainty "
    "stayed below 0.05 eV/Å for 1 generation(s)",
    "generations": 3,
    "final_committee_generation": 2,
    "dataset_size": 16,
    "labels_initial": 12,
    "labels_explored": 4,
    "labels_failed": 0,
    "strategy": "adversarial",
    "level_of_theory": "RKS-PBE/6-31G*",
    "wall_seconds": 120.0,
    "run_dir": "runs/ammonia",
}


def _holder(root: Path, pid: int, beat_ago: float = 0.0, host: str | None = None) -> None:
    """``run.lock``'s holder record as :func:`advloop.flows.run_folder.hold` writes it."""
    now = time.time()
    record = {"host": host or socket.gethostname(), "pid": pid, "since": now - 900}
    (root / "run.lock").write_text(json.dumps({**record, "beat": now - beat_ago}))


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return int(done.stdout)


def _make_run(
    root: Path,
    records: list[dict],
    summary: dict | None,
    partial_line: bool = False,
    resumed: bool = False,
) -> Path:
    """A run folder as the flow leaves it: config.yaml first, records, then summary.json."""
    root.mkdir(parents=True)
    config = root / "config.yaml"
    config.write_text(f"system: {{name: {root.name}}}\n")
    text = "".join(json.dumps(r) + "\n" for r in records)
    (root / "generations.jsonl").write_text(
        text + ('{"generation": 9, "data' if partial_line else "")
    )
    t = time.time() - 600
    os.utime(config, (t, t))
    os.utime(root / "generations.jsonl", (t + 30, t + 30))
    if summary is not None:
        (root / "summary.json").write_text(json.dumps(summary))
        os.utime(root / "summary.json", (t + 60, t + 60))
    if resumed:  # a resume rewrites config.yaml after the old summary
        os.utime(config, (t + 120, t + 120))
    return root


@pytest.fixture
def runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    _make_run(runs / "ammonia", RECORDS, SUMMARY)
    water = _make_run(runs / "water", RECORDS[:1], None, partial_line=True)
    _holder(water, os.getpid())  # alive: this process, beating
    quartz = _make_run(
        runs / "quartz", RECORDS[:2], {**SUMMARY, "stop_reason": "max_generations"}, resumed=True
    )
    _holder(quartz, _dead_pid())  # resumed after its summary, then killed
    (runs / "not-a-run").mkdir()
    return runs


def _status(*args: str):
    return CliRunner().invoke(app, ["status", *args])


def test_status_lists_every_run_folder(runs):
    result = _status("--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "system",
        "generations",
        "dataset",
        "state",
        "phase",
        "last",
        "activity",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"ammonia", "water", "quartz"}
    assert rows["ammonia"].split()[1:5] == ["3", "16", "stopped:", "converged"]
    assert rows["water"].split()[1:4] == ["1", "14", "running"]  # half-written line skipped
    # resumed after its summary, and its process is gone
    assert rows["quartz"].split()[1:6] == ["2", "16", "ended", "without", "a"]
    assert "min ago" in rows["ammonia"]


def test_status_of_one_run_prints_its_generations_and_outcome(runs):
    result = _status("ammonia", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith("ammonia: stopped: converged (last activity ")
    assert "σF att. mean" in out[1] and "val F MAE" in out[1]
    rows = [line.split() for line in out[2:5]]
    assert [r[:4] for r in rows] == [
        ["0", "14", "2", "0"],
        ["1", "16", "2", "1"],
        ["2", "16", "-", "-"],
    ]
    assert rows[0][4:7] == ["0.4321", "0.9000", "0.2468"]
    assert rows[2][4] == "0.0123"
    assert out[5] == SUMMARY["stop_explanation"]
    assert out[6] == "dataset: 16 structures (12 initial, 4 from adversarial) at RKS-PBE/6-31G*"

    # the same run named by its folder
    by_path = _status(str(runs / "ammonia"))
    assert by_path.exit_code == 0 and by_path.stdout.splitlines()[2:5] == out[2:5]


def test_status_of_a_running_run_has_no_outcome(runs):
    result = _status("water", "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("water: running (last activity ")
    assert f"process: pid {os.getpid()} on {socket.gethostname()}, heartbeat" in result.stdout
    assert "dataset:" not in result.stdout and len(result.stdout.splitlines()) == 4


def test_status_tells_a_live_run_from_a_killed_or_silent_one(tmp_path):
    """A real process holds a run folder and beats; killed by SIGKILL it leaves no
    summary, and status says it ended; a holder on another host that stopped beating is
    stale."""
    root = _make_run(tmp_path / "runs" / "nh3", RECORDS[:1], None)
    script = (
        "import sys, time; from pathlib import Path; "
        "from advloop.flows.run_folder import hold\n"
        "with hold(Path(sys.argv[1]), heartbeat=0.1):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        first = json.loads((root / "run.lock").read_text())["beat"]
        deadline = time.time() + 30
        while json.loads((root / "run.lock").read_text())["beat"] == first:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.05)
        out = _status(str(root)).stdout
        assert out.startswith("nh3: running") and f"pid {proc.pid}" in out
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = _status(str(root)).stdout
    assert out.startswith("nh3: ended without a summary: resume with advloop run")
    assert f"pid {proc.pid} on {socket.gethostname()} is gone" in out

    _holder(root, 4242, beat_ago=600.0, host="node017.cluster")
    out = _status(str(root)).stdout
    assert out.startswith("nh3: stale: probably dead")
    assert "pid 4242 on node017.cluster last beat 10 min ago" in out


def test_a_run_that_lets_go_says_so(tmp_path):
    from advloop.flows.progress import liveness
    from advloop.flows.run_folder import hold

    root = tmp_path / "nh3"
    with hold(root, heartbeat=60.0):
        assert liveness(root).state == "running"
    alive = liveness(root)
    assert alive.state == "ended" and "let go" in alive.detail


def test_status_of_an_unknown_run_exits_2_naming_the_runs_there(runs):
    result = _status("ammnoia", "--runs-dir", str(runs))
    assert result.exit_code == 2
    assert "'ammnoia' is neither a run folder nor a system" in result.stderr
    assert "ammonia, quartz, water" in result.stderr
    assert _status("not-a-run", "--runs-dir", str(runs)).exit_code == 2


def test_status_with_no_runs_says_so(tmp_path):
    result = _status("--runs-dir", str(tmp_path / "nothing"))
    assert result.exit_code == 0 and "no run folders in" in result.stdout


def test_status_server_without_a_server_configured_exits_2(runs):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = _status("ammonia", "--runs-dir", str(runs), "--server")
    assert result.exit_code == 2
    assert "ammonia: stopped: converged" in result.stdout  # the local part still printed
    assert "no Prefect server configured: set PREFECT_API_URL" in result.stderr


def test_phase_follows_a_real_run_step_by_step(tmp_path):
    """The phase `advloop status` prints, read from the files each step leaves (real
    RHF/STO-3G labels, a real committee)."""
    from advloop.flows.progress import phase
    from advloop.flows.run_folder import RunLayout
    from advloop.flows.steps import (
        append_initial,
        explore_step,
        label_one,
        prepare_initial,
        select_step,
        train_step,
    )
    from advloop.flows.validation import validate_config
    from tests.flows.configs import EXAMPLES, TINY_CONFIG

    path = tmp_path / "tiny.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="nh3", structures=EXAMPLES / "structures" / "nh3.xyz", output_dir=tmp_path
        )
    )
    config = validate_config(path)
    root = config.run_dir()
    root.mkdir(parents=True)
    RunLayout(root).config.write_text(config.to_yaml())
    assert phase(root) == "preparing the initial structures"
    todo = prepare_initial(config)
    assert phase(root) == "labelling initial: 0 of 6"
    label_one(config, -1, todo[0])
    assert phase(root) == "labelling initial: 1 of 6"
    for k in todo[1:]:
        label_one(config, -1, k)
    append_initial(config)
    assert phase(root) == "training gen 0: 0 of 2 members"
    train_step(config, 0, 0)
    assert phase(root) == "training gen 0: 1 of 2 members"
    train_step(config, 0, 1)
    assert phase(root) == "exploring gen 0"
    explore_step(config, 0)
    assert phase(root) == "selecting gen 0"
    selected = select_step(config, 0, max_selected=2).selected
    assert phase(root) == f"labelling gen 0: 0 of {len(selected)}"
    label_one(config, 0, selected[0])
    assert phase(root) == f"labelling gen 0: 1 of {len(selected)}"


def test_progress_lines_are_throttled_to_one_per_interval(caplog):
    import logging

    from advloop.flows.progress import Throttled

    now = [0.0]
    report = Throttled(lambda k: f"step {k}", every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="advloop.progress"):
        for k in range(30):
            report(k)
            now[0] += 1.0
    assert [r.getMessage() for r in caplog.records] == ["step 0", "step 10", "step 20"]


def test_long_steps_report_their_progress(tmp_path, caplog):
    """Training's epochs and the attack's steps reach the advloop.progress logger (the
    terminal and the UI's logs), each step at least once."""
    import logging

    from advloop.flows.steps import explore_step, initial_dataset, train_step
    from advloop.flows.validation import validate_config
    from tests.flows.configs import EXAMPLES, TINY_CONFIG

    path = tmp_path / "tiny.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="nh3", structures=EXAMPLES / "structures" / "nh3.xyz", output_dir=tmp_path
        )
    )
    config = validate_config(path)
    initial_dataset(config)
    with caplog.at_level(logging.INFO, logger="advloop.progress"):
        for member in range(2):
            train_step(config, 0, member)
        explore_step(config, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "advloop.progress"]
    assert any(
        line.startswith("training gen 0 member 1: epoch 1 of at most 15, validation loss")
        for line in lines
    )
    assert any(line.startswith("attack gen 0: step 0 of 5, mean σ ") for line in lines)


def test_advloops_info_lines_pass_prefects_logging_in_a_command(tmp_path):
    """Prefect gives advloop's loggers its API handler but no level; the command's entry
    point gives them one, so that the progress lines above reach the terminal and the UI
    (a fresh process: the level is process-wide)."""
    script = (
        "import logging\n"
        "from advloop.flows.cli import use_prefect_defaults\n"
        "use_prefect_defaults()\n"
        "import prefect.logging.configuration as c\n"
        "c.setup_logging()\n"
        "print(logging.getLogger('advloop.progress').isEnabledFor(logging.INFO),"
        " logging.getLogger('advloop.flows.loop').isEnabledFor(logging.DEBUG))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PREFECT_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_a_resumed_run_says_what_it_found_and_which_invocation_came_before(tmp_path, caplog):
    import logging

    from advloop.flows.loop import ActiveLearningLoop, LocalJobs
    from advloop.flows.run_folder import hold
    from advloop.flows.validation import validate_config
    from tests.flows.configs import EXAMPLES, TINY_CONFIG

    path = tmp_path / "tiny.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="nh3", structures=EXAMPLES / "structures" / "nh3.xyz", output_dir=tmp_path
        )
    )
    config = validate_config(path)
    with hold(config.run_dir()):
        first = ActiveLearningLoop(config, LocalJobs()).run()
    assert first.resumed is None  # a fresh start
    more = config.model_copy(
        update={"budget": config.budget.model_copy(update={"max_generations": 2})}
    )
    with caplog.at_level(logging.INFO, logger="advloop.flows.loop"), hold(more.run_dir()):
        second = ActiveLearningLoop(more, LocalJobs()).run()
    assert second.resumed is not None
    assert second.resumed.startswith("resumed: found 2 finished generation(s) (0–1)")
    assert f"{first.dataset_size} labelled structures in the dataset" in second.resumed
    assert f"the previous invocation: pid {os.getpid()} on {socket.gethostname()}" in second.resumed
    assert "let go at" in second.resumed
    assert any(r.getMessage() == second.resumed for r in caplog.records)

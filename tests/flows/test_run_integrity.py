"""A run folder never ends up with a wrong dataset: not when its run is stopped by a
signal or a full disk, started twice at once, resumed with a changed config, or found
with a torn record or a lost or damaged dataset.

Each test drives ``advloop run`` in a real process (Prefect's embedded server on its own
PREFECT_HOME, as a user runs it) and compares what it leaves with an uninterrupted run of
the same config, :func:`finished`. Labels come from ASE's EMT (tests/flows/stand_in.py), a
stand-in for DFT that counts what it computes: these tests are about the run folder, not
about the numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from advloop.flows.run_folder import RunLayout
from advloop.potentials.dataset import Dataset
from tests.flows.stand_in import (
    N_INITIAL,
    ROOT,
    calls,
    subprocess_env,
    write_config,
    write_slow_config,
)
from tests.flows.test_resume_after_kill import assert_same_dataset, comparable

CLI = [sys.executable, "-c", "from advloop.flows.cli import app; app(prog_name='advloop')"]
pytestmark = [pytest.mark.slow, pytest.mark.system]


def _start(args: list[str], prefect_home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *args],
        cwd=ROOT,
        env=subprocess_env(prefect_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def advloop(args: list[str], prefect_home: Path) -> subprocess.CompletedProcess:
    """Run the command line in a process of its own; its exit status and output."""
    process = _start(args, prefect_home)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _records(layout: RunLayout) -> list[dict]:
    from advloop.flows.run_folder import read_generations

    return [r.to_dict() for r in read_generations(layout.root)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, RunLayout]:
    """An uninterrupted run of the stand-in config: its config file and run folder."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, "nh3")
    done = advloop(["run", str(config)], folder / "prefect-home")
    assert done.returncode == 0, done.stderr[-4000:]
    return config, RunLayout(folder / "runs" / "nh3")


def _copy(finished, tmp_path: Path) -> tuple[Path, RunLayout, list[str]]:
    """A copy of the finished run folder under ``tmp_path/runs`` (the config is the same,
    run with ``--output-dir``): the arguments of its ``advloop run``, its layout and the
    labels the stand-in had computed so far."""
    config, reference = finished
    shutil.copytree(reference.root, tmp_path / "runs" / reference.root.name)
    layout = RunLayout(tmp_path / "runs" / reference.root.name)
    return (
        ["run", str(config), "--output-dir", str(tmp_path / "runs")],
        layout,
        calls(config.parent, "nh3"),
    )


def _flow_run_states(prefect_home: Path, name: str) -> list[tuple[str, str]]:
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return db.execute(
            "SELECT s.type, s.message FROM flow_run f JOIN flow_run_state s "
            "ON f.state_id = s.id WHERE f.name = ? ORDER BY f.created",
            (name,),
        ).fetchall()


def test_sigint_and_sigterm_stop_the_run_whole_and_say_what_is_kept(finished, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) and a batch system's SIGTERM to the
    job's processes: exit 130 / 143 with one line saying what stopped the run and what is
    kept, no traceback, the flow run Cancelled / Crashed with that message, and a re-run
    that ends with the uninterrupted run's dataset."""
    _, reference = finished
    prefect_home = tmp_path / "prefect-home"
    config = write_config(tmp_path, "nh3-sig")
    layout = RunLayout(tmp_path / "runs" / "nh3-sig")
    for sig, code, state, when in (
        (signal.SIGINT, 130, "CANCELLED", layout.committee_dir(0)),
        (signal.SIGTERM, 143, "CRASHED", layout.selection(0)),
    ):
        process = _start(["run", str(config)], prefect_home)
        _wait_for(when, process)
        os.killpg(process.pid, sig)
        out, err = process.communicate(timeout=120)
        assert process.returncode == code, err[-4000:]
        assert "Traceback" not in err, err[-4000:]
        said = [line for line in err.splitlines() if line.startswith("advloop:")]
        assert len(said) == 1 and said[0].startswith(f"advloop: stopped by {sig.name}"), err
        assert "re-run the same command to resume" in said[0] and "labels" in said[0]
        assert _flow_run_states(prefect_home, "nh3-sig")[-1] == (
            state,
            said[0].removeprefix("advloop: "),
        )
        Dataset(layout.dataset)  # opens: nothing torn

    done = advloop(["run", str(config)], prefect_home)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _flow_run_states(prefect_home, "nh3-sig")[-1][0] == "COMPLETED"
    assert_same_dataset(layout, reference)
    assert comparable(_records(layout)) == comparable(_records(reference))
    computed = calls(tmp_path, "nh3-sig")
    assert len(computed) == len(set(computed))  # no label computed twice


def test_a_second_run_of_a_run_folder_is_refused_at_once(finished, tmp_path):
    """Labels that take 3 s each (as DFT would) keep the first run in its initial labelling
    while the second starts."""
    _, reference = finished
    prefect_home = tmp_path / "prefect-home"
    config = write_slow_config(tmp_path, "nh3-twice", delay_s=3.0)
    layout = RunLayout(tmp_path / "runs" / "nh3-twice")
    first = _start(["run", str(config)], prefect_home)
    _wait_for(layout.labels, first)
    second = advloop(["run", str(config)], tmp_path / "prefect-home-2")
    assert second.returncode == 2, second.stderr[-4000:]
    assert (
        f"is in use by another advloop run (host {socket.gethostname()}, pid {first.pid}, since "
    ) in second.stderr
    assert "Traceback" not in second.stderr
    assert not (tmp_path / "prefect-home-2" / "prefect.db").exists()  # refused before Prefect
    first.communicate(timeout=600)
    assert first.returncode == 0
    data, ref = Dataset(layout.dataset), Dataset(reference.dataset)  # one run's records, once
    assert data.hashes() == ref.hashes()
    np.testing.assert_allclose(data.arrays().energy, ref.arrays().energy, rtol=0, atol=1e-10)
    assert [r["generation"] for r in _records(layout)] == [0, 1]
    computed = calls(tmp_path, "nh3-twice")
    assert len(computed) == len(set(computed)) == len(ref)


def test_the_run_folder_lock_goes_with_its_process(tmp_path):
    """A flow run of the folder (a worker's, a served one) is refused while another process
    holds it; the lock is free the moment that process is SIGKILLed."""
    from advloop.flows.run_folder import RunFolderBusy, hold

    code = (
        "import sys, time; from pathlib import Path\n"
        "from advloop.flows.run_folder import hold\n"
        f"with hold(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            with hold(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold(tmp_path), hold(tmp_path):  # free again, and re-entrant in one process
        pass


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"labels": {"kind": "emt"}}, 'labels.calculator: "python" → "emt"'),
        (
            {"initial_data": {"n_structures": 6, "displacement": 0.05, "seed": 1}},
            "initial_data.seed: 0 → 1",
        ),
        (
            {"model": {"n_atom_basis": 32, "n_interactions": 2, "n_rbf": 10, "cutoff": 4.0}},
            "model.n_atom_basis: 16 → 32",
        ),
        ({"system": "other structures"}, "system.structures: structures "),
    ],
)
def test_a_resume_with_other_data_settings_is_refused(finished, tmp_path, change, line):
    """Each setting that defines the data, changed on a resume: exit 2, one line per changed
    key (old → new) and what to do, nothing written."""
    import yaml

    args, layout, _ = _copy(finished, tmp_path)
    config = yaml.safe_load(Path(args[1]).read_text())
    if change.get("system"):
        moved = tmp_path / "nh3-moved.xyz"
        from ase.io import read, write

        atoms = read(config["system"]["structures"])
        atoms.positions[0, 2] += 0.05
        write(moved, atoms)
        config["system"]["structures"] = str(moved)
    else:
        config.update(change)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    before = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*")}
    done = advloop(["run", str(changed), "--output-dir", args[3]], tmp_path / "prefect-home")
    assert done.returncode == 2, done.stderr[-4000:]
    assert line in done.stderr and "another system.name or output_dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert {p: p.stat().st_mtime_ns for p in layout.root.rglob("*")} == before


def test_settings_that_may_change_are_recorded_with_each_generation(finished, tmp_path):
    """A resume with a larger generation budget and another selection cap runs on, and its
    generation's record names the config it ran with, kept in configs/."""
    import yaml

    args, layout, _ = _copy(finished, tmp_path)
    config = yaml.safe_load(Path(args[1]).read_text())
    config["budget"]["max_generations"] = 2
    config["selection"]["max_selected"] = 2
    changed = tmp_path / "more.yaml"
    changed.write_text(yaml.safe_dump(config))
    done = advloop(["run", str(changed), "--output-dir", args[3]], tmp_path / "prefect-home")
    assert done.returncode == 0, done.stderr[-4000:]
    records = _records(layout)
    assert [r["generation"] for r in records] == [0, 1, 2]
    first, last = records[0]["config_sha256"], records[-1]["config_sha256"]
    assert first != last
    assert {p.stem for p in layout.configs.glob("*.yaml")} == {first, last}
    assert (
        yaml.safe_load((layout.configs / f"{last}.yaml").read_text())["budget"]["max_generations"]
        == 2
    )
    assert oct(layout.config.stat().st_mode & 0o777) == "0o600"  # configs are the owner's alone


def test_a_torn_generation_record_is_skipped_and_recomputed(finished, tmp_path):
    config, reference = finished
    args, layout, computed = _copy(finished, tmp_path)
    text = layout.generations.read_text()
    layout.generations.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    done = advloop(args, tmp_path / "prefect-home")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "is not a whole record" in done.stderr
    assert comparable(_records(layout)) == comparable(_records(reference))
    assert all(json.loads(line) for line in layout.generations.read_text().splitlines())
    assert_same_dataset(layout, reference)
    assert calls(config.parent, "nh3") == computed  # nothing labelled again


@pytest.mark.parametrize("damage", ["deleted", "truncated", "older copy"])
def test_a_lost_or_damaged_dataset_is_rebuilt_from_the_label_store(finished, tmp_path, damage):
    config, reference = finished
    args, layout, computed = _copy(finished, tmp_path)
    if damage == "deleted":
        layout.dataset.unlink()
    elif damage == "truncated":
        with open(layout.dataset, "r+b") as f:
            f.truncate(layout.dataset.stat().st_size // 2)
    else:  # the dataset as it was before generation 0's labels
        older = Dataset.create(tmp_path / "older.h5")
        data = Dataset(layout.dataset)
        atoms = data.to_atoms(range(N_INITIAL))
        older.append(
            atoms,
            [a.get_potential_energy() for a in atoms],
            [a.get_forces() for a in atoms],
            data.provenance()[:N_INITIAL],
        )
        shutil.copy(older.path, layout.dataset)
    done = advloop(args, tmp_path / "prefect-home")
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_dataset(layout, reference)
    assert comparable(_records(layout)) == comparable(_records(reference))
    assert calls(config.parent, "nh3") == computed  # rebuilt from the store: nothing computed
    if damage == "truncated":
        [aside] = layout.root.glob("dataset.h5.damaged-*")
        assert aside.stat().st_size < reference.dataset.stat().st_size


def test_a_dataset_that_cannot_be_rebuilt_is_refused_with_what_to_do(finished, tmp_path):
    args, layout, _ = _copy(finished, tmp_path)
    layout.dataset.unlink()
    shutil.rmtree(layout.labels)
    done = advloop(args, tmp_path / "prefect-home")
    assert done.returncode == 1, done.stderr[-4000:]
    assert "cannot give back the rest; restore dataset.h5 from a backup" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB tmpfs mounted for the test, unmounted after it (it needs the right to mount:
    root with CAP_SYS_ADMIN, as on the development and CI machines; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"this process may not mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("free_kb", [40, 400])
def test_a_full_disk_stops_the_run_naming_the_disk_and_the_resume_completes(
    finished, tmp_path, small_disk, free_kb
):
    """The run folder on a disk with ``free_kb`` left (the run fills it at different steps):
    the run stops with one line naming the disk and what to do; once space is freed, the
    re-run ends with the uninterrupted run's dataset."""
    import yaml

    _, reference = finished
    config = write_config(tmp_path, "nh3-full")
    text = yaml.safe_load(config.read_text())
    text["compute"] = {"min_free_disk_mb": 0}
    config.write_text(yaml.safe_dump(text))
    ballast = small_disk / "ballast"
    free = shutil.disk_usage(small_disk).free
    with open(ballast, "wb") as f:
        f.write(b"\0" * (free - free_kb * 1024))
    args = ["run", str(config), "--output-dir", str(small_disk / "runs")]
    full = advloop(args, tmp_path / "prefect-home")
    assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-4000:]
    assert "Traceback" not in full.stderr, full.stderr[-4000:]
    [said] = [line for line in full.stderr.splitlines() if line.startswith("error: disk full")]
    assert f"the disk mounted at {small_disk}" in said and "re-run the same command" in said

    ballast.unlink()
    done = advloop(args, tmp_path / "prefect-home")
    assert done.returncode == 0, done.stderr[-4000:]
    layout = RunLayout(small_disk / "runs" / "nh3-full")
    assert_same_dataset(layout, reference)
    assert comparable(_records(layout)) == comparable(_records(reference))

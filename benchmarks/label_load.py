"""Label load: one generation of 200 label tasks, 4 at once, through ``advloop run``.

Run ``python -m benchmarks.label_load [--quick] [--labels N] [--runners KIND ...]
[--output PATH]``; writes ``benchmarks/results/label_load.json``.

Each run is a real ``advloop run`` of a config file, in its own process, as a user starts
it: Prefect's embedded server (SQLite) on its own temporary ``PREFECT_HOME``, started and
stopped by the run. The config makes the first generation select and label exactly
``N`` structures (full: 200, quick: 24) with ``compute.label_workers: 4``: NH3, 8 initial
structures, random exploration of ``2 N`` displaced copies of them (0.1 Å; Kabsch-RMSD
de-duplication at 0.01 Å keeps them apart), selection above the 0th percentile of the
training set's uncertainty capped at ``N``, ``budget.max_labels: N``, one generation and
a committee of two tiny PaiNN models trained for 3 epochs. ``compute.label_retries`` is
0, so that a label task the server fails shows up as a failed label rather than being
hidden by a retry. It runs once with ``runners.labelling: threads`` (the default: the
tasks run in threads of the run's process) and once with ``processes`` (a pool of 4
worker processes for the generation's labelling sub-flow).

Labels come from ASE's EMT, a stand-in for DFT that costs about a millisecond per
structure: the benchmark is about orchestration (task runs, their states and logs
written to the server's SQLite database, results) under 200 tasks, not about the labels.
A DFT label of seconds to minutes spreads the same writes over far more time.

Measured for each runner:

- labels added by the generation (must be ``N``), labels failed, the run's exit status;
- server busy: in the run's output (the run, its worker processes and the embedded
  server write to the same stdout/stderr), the lines of a Prefect client retrying after a
  503 (``retryable status code 503``), the server's own reports of a retryable database
  error (``Encountered retryable exception``), and every line naming
  ``database is locked``. For this the run's environment adds two logging settings, which
  change what is printed and nothing else: ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true``
  (the server logs each SQLite lock it answered with 503) and
  ``PREFECT_LOGGING_LOGGERS_PREFECT_CLIENT_LEVEL=DEBUG`` (clients log their retries);
  ``client_503_retries_during_labelling`` counts the client retries logged from the end of
  the generation's exploration (its candidates' file) to its last label stored, and
  ``failure_lines`` the lines of a task or flow run that ended Failed or Crashed or of a
  label that failed;
- time: the run's wall time, the generation's split from ``generations.jsonl``
  (``seconds_labelling`` is the union of the label tasks', the append's and the
  evaluation's intervals; ``seconds_orchestration`` the time no step body ran), and the
  labelling window: from the generation's first label stored to its last (the label
  store's file times), with the label tasks finished per second over it. The labelling
  step reads the generation's candidates once and hands each label task its structure
  (``advloop.flows.steps.selected_structures``); ``candidates_read_seconds`` is the time of
  that one read, measured after the run in the benchmark's process;
- memory: the resident set size (RSS) of the run's process and of every process under
  it, sampled every 0.5 s (psutil where installed, else ``/proc``), split into the flow
  process, the embedded server (the ``uvicorn`` child) and any other (label workers), each
  sample with the number of the generation's labels stored then. Reported: the RSS at the
  start of labelling (the last sample before the first label), at its end (the first
  sample with all labels stored), the peak during labelling and over the run, and the
  growth in MB per 100 labels, the least-squares slope of RSS against labels stored over
  the samples from a quarter of the labels on (after a process pool's start-up). RSS
  summed over processes counts the pages they share once per process.

The machine's CPU count, ``nproc`` and load average are recorded: on a shared 2-core
machine other jobs stretch the times, not the counts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from advloop.flows.run_folder import RunLayout, read_candidates, read_generations

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "label_load.json"
STRUCTURES = ROOT / "examples" / "structures" / "nh3.xyz"
N_FULL, N_QUICK = 200, 24
WORKERS = 4
N_INITIAL = 8
SAMPLE_SECONDS = 0.5
ROLES = ("flow", "server", "workers")  # the run's process, the embedded server, the others
RUNNERS = ("threads", "processes")
SEEDS = {"initial_data.seed": 0, "committee.seed": 0}
LEVEL_OF_THEORY = "EMT (ASE), a stand-in for DFT: the benchmark measures orchestration"

# What a line of the run's output says about the server (each counted once per line).
SERVER_BUSY = {
    "client_503_retries": "retryable status code 503",
    "server_retryable_errors": "Encountered retryable exception",
    "database_is_locked_lines": "database is locked",
}
FAILURE = (
    "Finished in state Failed",
    "Finished in state Crashed",
    "failed after its retries",
    "label failed:",
)
# Settings that change what the run prints, nothing else (see the module docstring).
OBSERVE = {
    "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
    "PREFECT_LOGGING_LOGGERS_PREFECT_CLIENT_LEVEL": "DEBUG",
}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def config_text(name: str, output_dir: Path, n_labels: int, runner: str) -> str:
    """The run's config (YAML): one generation that selects and labels ``n_labels``
    structures with EMT, 4 label tasks at once on the ``runner`` kind."""
    labelling = "threads" if runner == "threads" else f"{{kind: {runner}, max_workers: {WORKERS}}}"
    n_per_seed = math.ceil(2 * n_labels / N_INITIAL)
    return f"""\
# advloop run of one generation of {n_labels} label tasks, {WORKERS} at once; EMT stands in
# for DFT (the benchmark measures orchestration, not labels)
system: {{name: {name}, structures: {STRUCTURES}}}
initial_data: {{n_structures: {N_INITIAL}, displacement: 0.05, seed: {SEEDS["initial_data.seed"]}}}
labels: {{kind: emt}}
model: {{n_atom_basis: 8, n_interactions: 1, n_rbf: 8, cutoff: 4.0}}
committee: {{n_members: 2, seed: {SEEDS["committee.seed"]}}}
training: {{max_epochs: 3, warm_start_epochs: 2, batch_size: 8}}
exploration: {{kind: random, n_seeds: {N_INITIAL}, std: 0.1, n_per_seed: {n_per_seed}}}
selection: {{percentile: 0, rmsd_threshold: 0.01, max_selected: {n_labels}}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 1, max_labels: {n_labels}}}
compute: {{label_workers: {WORKERS}, label_retries: 0, torch_threads: 1}}
runners: {{labelling: {labelling}}}
output_dir: {output_dir}
"""


def run_command(config: Path) -> list[str]:
    """``advloop run <config>`` with this interpreter's ``advloop`` (or its module)."""
    script = Path(sys.executable).with_name("advloop")
    if script.exists():
        return [str(script), "run", str(config)]
    code = "import sys; from advloop.flows.cli import app; sys.argv[0] = 'advloop'; app()"
    return [sys.executable, "-c", code, "run", str(config)]


def run_env(prefect_home: Path) -> dict[str, str]:
    """The caller's environment without its Prefect settings (so the run starts its own
    embedded server), on ``prefect_home``, one OpenMP thread, this checkout importable,
    and the logging settings of :data:`OBSERVE`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    path = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(PREFECT_HOME=str(prefect_home), OMP_NUM_THREADS="1", PYTHONPATH=path, **OBSERVE)
    return env


# --- memory -------------------------------------------------------------------------


def _proc_tree(pid: int) -> list[tuple[int, str, int]]:
    """``(pid, command line, RSS bytes)`` of ``pid`` and every process under it."""
    try:
        import psutil
    except ImportError:
        return _proc_tree_linux(pid)
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            out.append((p.pid, " ".join(p.cmdline()), p.memory_info().rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _proc_tree_linux(pid: int) -> list[tuple[int, str, int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    page = os.sysconf("SC_PAGE_SIZE")
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            rss_pages = int(Path(f"/proc/{p}/statm").read_text().split()[1])
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
        out.append((p, cmd.decode("utf-8", "replace"), rss_pages * page))
    return out


@dataclass
class Sampler:
    """Samples every :data:`SAMPLE_SECONDS` the RSS (MB) of a run's process tree, by role,
    and how many labels the run folder's label store holds, until :meth:`stop`."""

    pid: int
    layout: RunLayout
    t0: float
    # [seconds since t0, labels stored, RSS MB of the flow, the server, the workers]
    samples: list[list[float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            t = time.time() - self.t0
            tree = _proc_tree(self.pid)
            if tree:
                mb = {"flow": 0.0, "server": 0.0, "workers": 0.0}
                for pid, cmd, rss in tree:
                    role = (
                        "flow" if pid == self.pid else "server" if "uvicorn" in cmd else "workers"
                    )
                    mb[role] += rss / 2**20
                self.samples.append(
                    [
                        round(t, 2),
                        float(count_labels(self.layout)),
                        *(round(mb[k], 1) for k in ROLES),
                    ]
                )
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop.set()


def count_labels(layout: RunLayout) -> int:
    """Labels in the run folder's label store (finished files only)."""
    if not layout.labels.is_dir():
        return 0
    return sum(1 for p in layout.labels.glob("*/*.npz") if not p.name.endswith(".tmp.npz"))


def memory_summary(samples: list[list[float]], n_labels: int) -> dict:
    """RSS (MB) at the start and end of labelling, its peaks and its growth per 100 labels
    (see the module docstring); ``samples`` as :class:`Sampler` keeps them, labels counted
    with the initial ones."""
    arr = np.array(samples, dtype=float)
    done = arr[:, 1] - N_INITIAL
    total = arr[:, 2:].sum(axis=1)
    cols = {"total": total, **{r: arr[:, 2 + k] for k, r in enumerate(ROLES)}}
    started = np.nonzero(done > 0)[0]
    finished = np.nonzero(done >= n_labels)[0]
    if not len(started) or not len(finished):
        most = int(done.max()) if len(done) else 0
        raise RuntimeError(
            f"the samples never saw labelling start and end ({len(samples)} "
            f"samples, at most {most} labels)"
        )
    first = max(started[0] - 1, 0)
    last = finished[0]
    window = slice(first, last + 1)
    steady = np.arange(first, last + 1)[done[window] >= n_labels / 4]

    def at(i: int) -> dict:
        return {k: round(float(v[i]), 1) for k, v in cols.items()}

    def slope(v: np.ndarray) -> float | None:
        x = done[steady]
        if len(steady) < 3 or np.ptp(x) == 0:
            return None
        return round(float(np.polyfit(x, v[steady], 1)[0] * 100), 2)

    return {
        "sample_interval_seconds": SAMPLE_SECONDS,
        "n_samples": len(samples),
        "n_samples_labelling": int(last - first + 1),
        "labelling_start_seconds": float(arr[first, 0]),
        "labelling_end_seconds": float(arr[last, 0]),
        "rss_mb_at_labelling_start": at(first),
        "rss_mb_at_labelling_end": at(last),
        "rss_mb_peak_labelling": {k: round(float(v[window].max()), 1) for k, v in cols.items()},
        "rss_mb_peak_run": {k: round(float(v.max()), 1) for k, v in cols.items()},
        "rss_growth_mb_labelling": {
            k: round(float(v[last] - v[first]), 1) for k, v in cols.items()
        },
        "rss_growth_mb_per_100_labels": {k: slope(v) for k, v in cols.items()},
        "samples_columns": ["seconds", "labels_stored", *(f"rss_mb_{r}" for r in ROLES)],
        "samples": samples,
    }


# --- one run -------------------------------------------------------------------------


def _line_time(line: str, day: datetime.date) -> float | None:
    """``time.time()`` s of a log line that starts with Prefect's ``HH:MM:SS.mmm |`` (local
    time, on ``day``); None for other lines."""
    try:
        clock = datetime.datetime.strptime(line[:12], "%H:%M:%S.%f").time()
    except ValueError:
        return None
    return datetime.datetime.combine(day, clock).timestamp()


def scan_output(
    text: str, window: tuple[float, float] | None = None, day: datetime.date | None = None
) -> dict:
    """Server-busy and failure lines of a run's output (see the module docstring); with
    ``window`` (``time.time()`` s), also the client retries logged inside it; the SQL
    statements the server answered 503 to, by kind."""
    lines = text.splitlines()
    out: dict = {k: sum(pattern in line for line in lines) for k, pattern in SERVER_BUSY.items()}
    if window is not None:
        day = day or datetime.date.today()
        times = [
            _line_time(line, day) for line in lines if SERVER_BUSY["client_503_retries"] in line
        ]
        out["client_503_retries_during_labelling"] = sum(
            t is not None and window[0] <= t <= window[1] for t in times
        )
    statements: dict[str, int] = {}
    busy = False
    for line in lines:
        if SERVER_BUSY["server_retryable_errors"] in line:
            busy = True
        elif busy and line.startswith("[SQL: "):
            kind = " ".join(line[6:].split()[:3])  # INSERT INTO task_run, UPDATE flow_run SET
            statements[kind] = statements.get(kind, 0) + 1
            busy = False
    out["server_retryable_statements"] = statements
    out["failure_lines"] = sum(any(p in line for p in FAILURE) for line in lines)
    examples = [
        line.strip()
        for line in lines
        if any(
            p in line
            for p in (
                SERVER_BUSY["client_503_retries"],
                SERVER_BUSY["server_retryable_errors"],
                *FAILURE,
            )
        )
    ]
    out["examples"] = list(dict.fromkeys(examples))[:6]
    return out


def label_window(layout: RunLayout) -> tuple[float, float]:
    """Times (``time.time()`` s) of the generation's first and last label stored: the
    label store's files after the :data:`N_INITIAL` oldest (the initial labels)."""
    times = sorted(
        p.stat().st_mtime for p in layout.labels.glob("*/*.npz") if not p.name.endswith(".tmp.npz")
    )[N_INITIAL:]
    if not times:
        raise RuntimeError(f"no label of generation 0 in {layout.labels}")
    return times[0], times[-1]


def candidates_read_seconds(layout: RunLayout, repeats: int = 3) -> float:
    """Median seconds to read the generation's candidates, as the labelling step does once
    for all its label tasks (:func:`advloop.flows.run_folder.read_candidates`)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_candidates(layout, 0)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)), 4)


def run_once(root: Path, runner: str, n_labels: int, timeout: float = 1800) -> dict:
    """One ``advloop run`` of :func:`config_text` under ``root``; its figures."""
    name = f"nh3-load-{runner}"
    config = root / f"{name}.yaml"
    config.write_text(config_text(name, root / "runs", n_labels, runner))
    layout = RunLayout(root / "runs" / name)
    home = root / f"prefect-home-{runner}"
    command = run_command(config)
    load_before = _load()
    stdout, stderr = root / f"{name}.out", root / f"{name}.err"
    t0 = time.time()
    with open(stdout, "w") as out, open(stderr, "w") as err:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=run_env(home), stdout=out, stderr=err, start_new_session=True
        )
        sampler = Sampler(proc.pid, layout, t0)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        try:
            code = proc.wait(timeout)
        finally:
            sampler.stop()
            thread.join()
            if proc.poll() is None:  # timed out or interrupted (its server stops with it)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.time() - t0
    text = stdout.read_text() + "\n" + stderr.read_text()
    if code != 0:
        raise RuntimeError(
            f"advloop run with {runner} labelling exited with {code}:\n{text[-4000:]}"
        )
    summary = json.loads(layout.summary.read_text())
    record = next(r.to_dict() for r in read_generations(layout.root) if r.generation == 0)
    first, last = label_window(layout)
    window = last - first
    out = {
        "runner": runner,
        "label_workers": WORKERS,
        "exit_status": code,
        "stop_reason": summary["stop_reason"],
        "candidates": record.get("attack_candidates"),
        "labels_selected": record.get("selected"),
        "labels_added": record.get("labels_added", 0),
        "labels_failed": record.get("labels_failed", 0),
        "labels_stored_gen0": count_labels(layout) - N_INITIAL,
        "dataset_size": summary["dataset_size"],
        "run_wall_seconds": round(wall, 2),
        "generation_seconds": round(record["seconds"], 2),
        "seconds_labelling": round(record["seconds_labelling"], 2),
        "seconds_orchestration": round(record["seconds_orchestration"], 2),
        "label_window_seconds": round(window, 2),
        # from the first label stored to the last: n - 1 intervals
        "label_tasks_per_second": round((n_labels - 1) / window, 2) if window > 0 else None,
        # each label task reads the whole candidates file: n_labels such reads
        "candidates_read_seconds": candidates_read_seconds(layout),
        # retries from the candidates' file (exploration's end) to the last label stored
        "server": scan_output(
            text, (layout.candidates(0).stat().st_mtime, last), datetime.date.fromtimestamp(t0)
        ),
        "memory": memory_summary(sampler.samples, n_labels),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "config": config.read_text(),
    }
    busy, mem = out["server"], out["memory"]
    start, end, peak = (
        mem[k]["total"]
        for k in ("rss_mb_at_labelling_start", "rss_mb_at_labelling_end", "rss_mb_peak_labelling")
    )
    print(
        f"{runner}: {out['labels_added']} of {n_labels} labels added, "
        f"{out['labels_failed']} failed; run {wall:.1f} s, labels stored over {window:.1f} s; "
        f"{busy['client_503_retries']} client 503 retries "
        f"({busy['client_503_retries_during_labelling']} while labelling), "
        f"{busy['database_is_locked_lines']} 'database is locked' lines, "
        f"{busy['failure_lines']} failure lines; RSS total {start:.0f} → {end:.0f} MB "
        f"(peak {peak:.0f}), {mem['rss_growth_mb_per_100_labels']['total']} MB per 100 labels"
    )
    return out


def run(
    quick: bool, root: Path, runners: tuple[str, ...] = RUNNERS, n_labels: int | None = None
) -> dict:
    """A run per labelling runner kind, in folders under ``root``; ``n_labels`` label
    tasks (default: :data:`N_QUICK` or :data:`N_FULL`)."""
    n = n_labels or (N_QUICK if quick else N_FULL)
    load_start = _load()
    results = {}
    for runner in runners:
        part = root / runner
        part.mkdir(parents=True, exist_ok=True)
        results[runner] = run_once(part, runner, n)
    return {
        "level_of_theory": LEVEL_OF_THEORY,
        "n_labels": n,
        "label_workers": WORKERS,
        "seeds": SEEDS,
        "run_command": "advloop run <config>",
        "load_average": {"start": load_start, "end": _load()},
        "runs": results,
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        nproc = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "nproc": nproc,
        "memory_gb": round(memory / 2**30, 1),
        "shared": "other jobs may run on this machine: see load_average",
    }


def record(results: dict, argv: list[str], quick: bool, seconds: float) -> dict:
    """The benchmark's record: how, where and when it ran, then ``results``."""
    return {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.label_load", *argv]),
        "machine": machine(),
        "versions": {
            "python": platform.python_version(),
            **{k: _version(k) for k in ("prefect", "torch", "sqlalchemy", "ase", "psutil")},
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "seconds": round(seconds, 2),
        **results,
    }


_NUMBERS = re.compile(r"\[\s*(-?[\d.]+(?:e-?\d+)?(?:,\s*-?[\d.]+(?:e-?\d+)?)*)\s*\]")


def write_record(path: Path, out: dict) -> dict:
    """Write the record as indented JSON, each list of numbers (a memory sample, a load
    average) on one line."""
    text = _NUMBERS.sub(
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        json.dumps(out, indent=2),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"wrote {path}")
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{N_QUICK} labels instead of {N_FULL}"
    )
    parser.add_argument(
        "--labels",
        type=int,
        default=None,
        help="label tasks in the generation (instead of --quick's or the default number)",
    )
    parser.add_argument(
        "--runners",
        nargs="+",
        choices=RUNNERS,
        default=list(RUNNERS),
        help="labelling runner kinds, one run each (default: all)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.labels is not None and args.labels < 1:
        parser.error("--labels must be at least 1")
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="advloop-label-load-"))
    try:
        results = run(args.quick, root, tuple(args.runners), args.labels)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = record(results, argv, args.quick, time.perf_counter() - t0)
    return write_record(args.output, out)


if __name__ == "__main__":
    main()

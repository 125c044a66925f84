"""ASE's EMT as a stand-in for DFT in flow tests about something else than the numbers
(resumption after a kill, failed SCFs), and the runs those tests start.

:func:`stand_in_emt` is a ``labels.python`` factory: its calculator appends the hash of
every structure it computes to a counter file (so a test can tell that no label was
computed twice) and raises the project's :class:`~advloop.calculators.errors.SCFConvergenceError`
for a fixed fraction of structures, chosen by structure hash (:func:`fails`), so the same
structures fail in every run whatever the order they are labelled in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from advloop.calculators.errors import SCFConvergenceError
from advloop.potentials.hashing import structure_hash
from tests.flows.configs import EXAMPLES, TINY_CONFIG

ROOT = Path(__file__).resolve().parents[2]
N_INITIAL = 6  # initial_data.n_structures of the tiny config
FACTORY = "tests.flows.stand_in:stand_in_emt"


def fails(hash_: str, fraction: float) -> bool:
    """Whether the stand-in's SCF "fails" on the structure of hash ``hash_``: its first 8
    hex digits, read as a number in [0, 1), are below ``fraction``."""
    return int(hash_[:8], 16) / 16**8 < fraction


class StandInEMT(EMT):
    """EMT that records each structure it computes in ``counter`` (one hash per line,
    ``<hash> failed`` for a failure) and fails the SCF of a ``fail_fraction`` of them."""

    def __init__(self, counter: str, fail_fraction: float = 0.0):
        super().__init__()
        self.counter, self.fail_fraction = Path(counter), fail_fraction

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        hash_ = structure_hash(atoms if atoms is not None else self.atoms)
        if fails(hash_, self.fail_fraction):
            self._record(f"{hash_} failed")
            raise SCFConvergenceError(
                "stand-in SCF did not converge (failed on purpose)", structure_hash=hash_
            )
        super().calculate(atoms, properties, system_changes)
        self._record(hash_)

    def _record(self, line: str) -> None:
        with open(self.counter, "a") as f:
            f.write(line + "\n")


def stand_in_emt(counter: str, fail_fraction: float = 0.0) -> StandInEMT:
    """``labels.python`` factory of :class:`StandInEMT`."""
    return StandInEMT(counter, fail_fraction)


def write_config(
    folder: Path, name: str, fail_fraction: float = 0.0, max_failure_ratio: float = 0.5
) -> Path:
    """The tiny NH3 config (tests/flows/conftest.py) labelled by the stand-in, with up to 3
    labels a generation, written to ``<folder>/<name>.yaml``, its run folder in
    ``<folder>/runs``; the stand-in's counter file is :func:`counter_path`."""
    text = TINY_CONFIG.format(
        name=name, structures=EXAMPLES / "structures" / "nh3.xyz", output_dir=folder / "runs"
    )
    # the failure fractions of the tests that use this config are set around the
    # candidates that the published rule selects from random seeds (the hashes that fail
    # are fixed), so those are pinned here rather than left to the defaults
    text = text.replace(
        "selection: {percentile: 0,",
        "selection: {method: threshold, weighting: none, percentile: 0,",
    ).replace("exploration: {kind: adversarial,", "exploration: {kind: adversarial, seeds: random,")
    text = text.replace("max_selected: 2", "max_selected: 3").replace(
        "max_labels: 10", f"max_labels: 10, max_failure_ratio: {max_failure_ratio}"
    )
    text = text.replace(
        "labels: {kind: pyscf, method: RHF, basis: STO-3G}",
        f"labels: {{kind: python, factory: '{FACTORY}', options: "
        f"{{counter: '{counter_path(folder, name)}', fail_fraction: {fail_fraction}}}}}",
    )
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def counter_path(folder: Path, name: str) -> Path:
    return folder / f"{name}-calls.txt"


def calls(folder: Path, name: str) -> list[str]:
    """The hashes the stand-in computed for run ``name``, in order (failures included)."""
    path = counter_path(folder, name)
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def subprocess_env(prefect_home: Path) -> dict[str, str]:
    """The environment of a run in its own process: Prefect's embedded server on its own
    PREFECT_HOME, one OpenMP thread, this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


class NaNForcesEMT(StandInEMT):
    """EMT that records each structure it computes in ``counter`` (``<hash> nan`` for a
    corrupted one) and returns NaN forces (an otherwise complete result: energy and every
    other force component stay EMT's) for a ``nan_fraction`` of structures, chosen by
    structure hash (:func:`fails`), as a broken calculator would."""

    def __init__(self, counter: str, nan_fraction: float = 0.0):
        super().__init__(counter)
        self.nan_fraction = nan_fraction

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        hash_ = structure_hash(atoms if atoms is not None else self.atoms)
        EMT.calculate(self, atoms, properties, system_changes)
        if fails(hash_, self.nan_fraction):
            self.results["forces"][0, 0] = float("nan")
            self._record(f"{hash_} nan")
        else:
            self._record(hash_)


def stand_in_emt_nan_forces(counter: str, nan_fraction: float = 0.0) -> NaNForcesEMT:
    """``labels.python`` factory of :class:`NaNForcesEMT`."""
    return NaNForcesEMT(counter, nan_fraction)


def write_nan_forces_config(
    folder: Path, name: str, nan_fraction: float, max_failure_ratio: float = 0.5
) -> Path:
    """:func:`write_config`'s run, labelled by :class:`NaNForcesEMT` (NaN forces for a
    ``nan_fraction`` of structures) instead of failing SCFs."""
    path = write_config(folder, name, 0.0, max_failure_ratio)
    text = path.read_text().replace(
        f"'{FACTORY}'", "'tests.flows.stand_in:stand_in_emt_nan_forces'"
    )
    path.write_text(text.replace("fail_fraction: 0.0", f"nan_fraction: {nan_fraction}"))
    return path


class SlowEMT(StandInEMT):
    """:class:`StandInEMT` taking ``delay_s`` more per structure, as DFT would: a run that
    stays in its labelling long enough for a test to act on it."""

    def __init__(self, counter: str, delay_s: float):
        super().__init__(counter)
        self.delay_s = delay_s

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(self.delay_s)
        super().calculate(atoms, properties, system_changes)


def stand_in_emt_slow(counter: str, delay_s: float = 1.0) -> SlowEMT:
    """``labels.python`` factory of :class:`SlowEMT`."""
    return SlowEMT(counter, delay_s)


def write_slow_config(folder: Path, name: str, delay_s: float) -> Path:
    """:func:`write_config`'s run, labelled by :class:`SlowEMT`."""
    path = write_config(folder, name)
    text = path.read_text().replace(f"'{FACTORY}'", "'tests.flows.stand_in:stand_in_emt_slow'")
    path.write_text(text.replace("fail_fraction: 0.0", f"delay_s: {delay_s}"))
    return path

"""Where a run keeps its files. The one place that knows the run-folder layout::

    runs/<system name>/
        config.yaml                 the validated configuration of the latest invocation
        configs/<sha>.yaml          every configuration the run has run with (generation
                                    records name theirs by ``config_sha256``)
        fingerprint.json            the settings that define the run's data
                                    (advloop.flows.run_folder)
        run.lock                    held by the process running the run (advloop.flows.run_folder)
        dataset.h5                  labelled structures (see advloop.potentials.dataset)
        dataset.h5.lock             held while the dataset is read (shared) or written (alone)
        .dask-tls/                  TLS key and certificate of a Slurm runner's workers
        committee/gen_000/member_0.pt ...   checkpoints of each generation's committee
        candidates/initial.npz      the displaced starting structures of the initial dataset
        candidates/gen_001.extxyz   attacked geometries of a generation, with uncertainties
        candidates/gen_001_trace.npz   the attack's objective and σ per step and seed
        candidates/gen_001_selection.json   the candidates chosen for labelling, kept before
                                    any is labelled (a resumed run labels exactly these)
        labels/ab/<key>.npz         every label computed, keyed by structure and level of theory
        generations.jsonl           one JSON record per finished generation
        summary.json                the run's outcome: why it stopped, totals
        submissions/<time>-<id>/    configs and structures sent with `advloop submit`
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_GEN = re.compile(r"gen_(\d+)$")

#: The batch of structures labelled for the initial dataset, in the places where a
#: generation's number names a batch (:meth:`RunLayout.batch`, label tasks).
INITIAL = -1


def batch_name(generation: int) -> str:
    """How a batch of structures to label is named to people: ``initial`` or ``gen 3``."""
    return "initial" if generation == INITIAL else f"gen {generation}"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.h5"

    @property
    def generations(self) -> Path:
        return self.root / "generations.jsonl"

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def labels(self) -> Path:
        """The content-addressed label store (see advloop.calculators.label_store)."""
        return self.root / "labels"

    @property
    def submissions(self) -> Path:
        """Inputs of runs submitted to a server (see advloop.flows.deployments)."""
        return self.root / "submissions"

    def committee_dir(self, generation: int) -> Path:
        return self.root / "committee" / f"gen_{generation:03d}"

    def member_checkpoint(self, generation: int, member: int) -> Path:
        return self.committee_dir(generation) / f"member_{member}.pt"

    def candidates(self, generation: int) -> Path:
        return self.root / "candidates" / f"gen_{generation:03d}.extxyz"

    @property
    def initial_structures(self) -> Path:
        """Kept exactly (float64), unlike extxyz's 8 decimals: their hashes are those of
        the structures as generated."""
        return self.root / "candidates" / "initial.npz"

    def selection(self, generation: int) -> Path:
        return self.root / "candidates" / f"gen_{generation:03d}_selection.json"

    def exploration_trace(self, generation: int) -> Path:
        return self.root / "candidates" / f"gen_{generation:03d}_trace.npz"

    def trained_generations(self) -> list[int]:
        base = self.root / "committee"
        if not base.is_dir():
            return []
        gens = [int(m.group(1)) for p in base.iterdir() if (m := _GEN.match(p.name))
                and any(p.glob("member_*.pt"))]
        return sorted(gens)

    def committee_checkpoints(self, generation: int | None = None) -> list[Path]:
        """Checkpoints of ``generation`` (default: the latest trained one)."""
        gens = self.trained_generations()
        if not gens:
            raise FileNotFoundError(f"no trained committee in {self.root / 'committee'}")
        if generation is None:
            generation = gens[-1]
        elif generation not in gens:
            raise FileNotFoundError(
                f"generation {generation} has no committee in {self.root}; trained: {gens}")
        paths = sorted(self.committee_dir(generation).glob("member_*.pt"),
                       key=lambda p: int(p.stem.split("_")[1]))
        return paths

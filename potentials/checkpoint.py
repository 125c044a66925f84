"""The one module that reads and writes model files.

A checkpoint is a plain dict of tensors and primitives (``torch.load(weights_only=True)``
safe): the format tag, the :class:`ModelSpec` as a dict, the state dict, and training
metrics. Loading a checkpoint into another architecture is refused with a clear error.

Checkpoints are read with ``weights_only=True``: a file holding any other pickled object
(one that would run code while unpickling) is refused before anything in it is called.
Tensors holding NaN or infinity are refused both ways, so a diverged model never becomes
a checkpoint and a damaged one never becomes a committee member.

A committee folder (a run's ``committee/``) holds one folder per trained generation,
``gen_000/member_0.pt ...``: :class:`CommitteeFolder` is the one place that knows it.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from advloop.potentials.model import EnergyModel, ModelSpec

FORMAT = "advloop-member"
VERSION = 1
_GEN = re.compile(r"gen_(\d+)$")


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, non-finite, or for another model configuration."""


def non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    return [
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def save_member(
    model: EnergyModel, path: str | Path, metrics: dict[str, float] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically (a crash never leaves half a file).

    Raises :class:`CheckpointError`, writing nothing, if a weight is not finite.
    """
    path = Path(path)
    if bad := non_finite(model.state_dict()):
        raise CheckpointError(
            f"refusing to write {path}: the model's {', '.join(bad[:3])} "
            "hold NaN or infinite values (its training diverged)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # torch.load does not check the zip archive's CRC-32s, so flipped bytes inside a
        # tensor would load silently as wrong (or NaN) weights; check them first.
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable advloop checkpoint: {err}") from err
    if bad_member is not None:
        raise CheckpointError(f"{path} is corrupted: checksum mismatch in {bad_member}")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an advloop committee-member checkpoint")
    return payload


def load_member(
    path: str | Path, expected: ModelSpec | None = None, dtype: torch.dtype = torch.float32
) -> EnergyModel:
    """Load one member; with ``expected``, refuse a checkpoint of another architecture."""
    payload = read_checkpoint(path)
    spec = ModelSpec(**payload["spec"])
    if expected is not None and spec != expected:
        raise CheckpointError(
            f"{path} was trained with model settings {spec.to_dict()}, but the run asks for "
            f"{expected.to_dict()}; start a new run or restore the original model settings"
        )
    if bad := non_finite(payload["state_dict"]):
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({', '.join(bad[:3])}); "
            "delete it to retrain this member"
        )
    model = EnergyModel(spec)
    model.network.to(dtype)
    model.load_state_dict(payload["state_dict"])
    return model


def checkpoint_metrics(path: str | Path) -> dict[str, float]:
    return dict(read_checkpoint(path)["metrics"])


@dataclass(frozen=True)
class CommitteeFolder:
    """The checkpoints of every generation's committee under ``root``
    (``gen_NNN/member_K.pt``)."""

    root: Path

    @classmethod
    def of_run(cls, run_dir: str | Path) -> CommitteeFolder:
        """The committee folder of a run folder (``<run>/committee``)."""
        return cls(Path(run_dir) / "committee")

    def generation_dir(self, generation: int) -> Path:
        return self.root / f"gen_{generation:03d}"

    def member(self, generation: int, member: int) -> Path:
        return self.generation_dir(generation) / f"member_{member}.pt"

    def trained_generations(self) -> list[int]:
        """The generations with at least one whole member checkpoint, in order."""
        if not self.root.is_dir():
            return []
        return sorted(
            int(m.group(1))
            for p in self.root.iterdir()
            if (m := _GEN.match(p.name)) and any(p.glob("member_*.pt"))
        )

    def checkpoints(self, generation: int | None = None) -> list[Path]:
        """The member checkpoints of ``generation`` (default: the latest trained one), in
        member order. Raises FileNotFoundError if there is none."""
        gens = self.trained_generations()
        if not gens:
            raise FileNotFoundError(f"no trained committee in {self.root}")
        if generation is None:
            generation = gens[-1]
        elif generation not in gens:
            raise FileNotFoundError(
                f"generation {generation} has no committee in {self.root.parent}; trained: {gens}"
            )
        return sorted(
            self.generation_dir(generation).glob("member_*.pt"),
            key=lambda p: int(p.stem.split("_")[1]),
        )

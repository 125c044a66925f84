"""The committee as an ASE calculator."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes

from advloop.potentials import properties as P
from advloop.potentials.checkpoint import CommitteeFolder
from advloop.potentials.committee import Committee


class CommitteeCalculator(Calculator):
    """Committee-mean energy (eV) and forces (eV/Å), with the committee spread as
    ``energy_std`` (eV) and ``forces_std`` ([n_atoms], eV/Å: the standard deviation of
    each atom's force vector over members)."""

    implemented_properties = [P.ENERGY, P.FORCES, P.ENERGY_STD, P.FORCES_STD]

    def __init__(self, committee: Committee, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], dtype: torch.dtype = torch.float64, **kwargs
    ) -> CommitteeCalculator:
        return cls(Committee.from_checkpoints(paths, dtype=dtype), **kwargs)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        generation: int | None = None,
        dtype: torch.dtype = torch.float64,
        **kwargs,
    ) -> CommitteeCalculator:
        """The committee of a run folder: its latest trained generation by default."""
        paths = CommitteeFolder.of_run(run_dir).checkpoints(generation)
        return cls.from_checkpoints(paths, dtype=dtype, **kwargs)

    def calculate(
        self, atoms: Atoms | None = None, properties=(P.ENERGY,), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        if a is None:
            raise CalculatorSetupError("no atoms to calculate: pass atoms or attach the calculator")
        pbc = np.asarray(a.pbc, dtype=bool)
        pred = self.committee.predict_arrays(
            a.numbers,
            a.positions,
            np.array([len(a)]),
            cells=a.cell[:][None] if pbc.any() else None,
            pbc=pbc[None] if pbc.any() else None,
        )
        self.results = {
            P.ENERGY: float(pred.energy_mean[0]),
            P.FORCES: pred.forces_mean,
            P.ENERGY_STD: float(pred.energy_std[0]),
            P.FORCES_STD: pred.forces_std,
        }

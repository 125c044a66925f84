"""Moving labelled structures between the advloop dataset and other formats.

Import: any file ``ase.io.read`` understands whose frames carry an energy and forces
(extended XYZ, ASE trajectories, ASE databases). Export: extended XYZ (see
:meth:`advloop.potentials.dataset.Dataset.export_extxyz`) and schnetpack's ``ASEAtomsData``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

from advloop.potentials._schnetpack import schnetpack as spk
from advloop.potentials.dataset import Dataset, Provenance
from advloop.potentials.hashing import structure_hash


def import_labelled(
    dataset: Dataset,
    path: str | Path,
    level_of_theory: str,
    generation: int = 0,
    strategy: str = "imported",
) -> np.ndarray:
    """Append every labelled frame of ``path`` that is not in ``dataset`` yet.

    Returns the new records' indices. Raises ValueError, before writing anything, if a
    frame has no energy or forces.
    """
    path = Path(path)
    try:
        # index=":" reads every frame as a list (ase's annotation allows a single Atoms)
        frames: list[Atoms] = read(str(path), index=":")  # type: ignore[assignment]
    except Exception as err:  # ASE raises many types for malformed files
        raise ValueError(f"{path} could not be read: {err}") from err
    energies, forces = [], []
    for k, atoms in enumerate(frames):
        try:
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
        except Exception as err:
            raise ValueError(f"{path} frame {k} has no energy and forces to import: {err}") from err
    known = set(dataset.hashes())
    new = [k for k, a in enumerate(frames) if structure_hash(a) not in known]
    return dataset.append(
        [frames[k] for k in new],
        [energies[k] for k in new],
        [forces[k] for k in new],
        [Provenance(generation, strategy, level_of_theory)] * len(new),
    )


def export_asedata(dataset: Dataset, path: str | Path):
    """Write the dataset as schnetpack ``ASEAtomsData`` (energy in eV, forces in eV/Å)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; schnetpack databases are not overwritten")
    data = spk.data.ASEAtomsData.create(
        str(path), distance_unit="Ang", property_unit_dict={"energy": "eV", "forces": "eV/Ang"}
    )
    images = dataset.to_atoms()
    props = [
        {"energy": np.array([a.get_potential_energy()]), "forces": a.get_forces()} for a in images
    ]
    for a in images:
        a.calc = None
    data.add_systems(props, images)
    return data

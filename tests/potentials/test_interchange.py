from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.io import write

from advloop.potentials.dataset import Dataset, Provenance
from advloop.potentials.interchange import export_asedata, import_labelled


def _labelled(n: int, seed: int):
    """NH3 frames labelled by EMT (a stand-in oracle: these tests are about file formats)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("suffix", [".extxyz", ".traj", ".db"])
def test_import_from_ase_formats_skips_known_structures(tmp_path, suffix):
    frames = _labelled(4, 0)
    path = tmp_path / f"frames{suffix}"
    write(str(path), frames)
    dataset = Dataset.create(tmp_path / "d.h5")
    idx = import_labelled(dataset, path, "EMT")
    assert list(idx) == [0, 1, 2, 3]
    arr = dataset.arrays()
    assert arr.energy == pytest.approx([a.get_potential_energy() for a in frames])
    assert np.allclose(arr.forces, np.concatenate([a.get_forces() for a in frames]))
    assert dataset.provenance()[0].strategy == "imported"
    assert len(import_labelled(dataset, path, "EMT")) == 0  # already there
    assert len(dataset) == 4


def test_import_refuses_unlabelled_frames_without_writing(tmp_path):
    path = tmp_path / "bare.xyz"
    write(str(path), [molecule("NH3")])
    dataset = Dataset.create(tmp_path / "d.h5")
    with pytest.raises(ValueError, match="frame 0 has no energy"):
        import_labelled(dataset, path, "EMT")
    assert len(dataset) == 0


def test_export_to_schnetpack_asedata(tmp_path):
    frames = _labelled(3, 1)
    dataset = Dataset.create(tmp_path / "d.h5")
    dataset.append(
        frames,
        [a.get_potential_energy() for a in frames],
        [a.get_forces() for a in frames],
        [Provenance(0, "x", "EMT")] * 3,
    )
    data = export_asedata(dataset, tmp_path / "spk.db")
    assert len(data) == 3
    row = data[1]
    assert float(row["energy"]) == pytest.approx(frames[1].get_potential_energy())
    assert np.allclose(row["forces"].numpy(), frames[1].get_forces())
    with pytest.raises(FileExistsError):
        export_asedata(dataset, tmp_path / "spk.db")

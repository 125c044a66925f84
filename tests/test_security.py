"""Nothing a user hands advloop is unpickled or executed, and nothing submitted is written
outside its run folder.

A pickle that runs code when loaded (:class:`_MakesAFolder`) is put in a checkpoint and in
a submitted structure file (ASE's old pickle trajectory format, ``.traj``); each is
refused, and the folder the code would make is never made. Each test first shows that
the payload does run when unpickled, so a pass means the loader refused it, not that the
payload was harmless. Submissions whose structure file name is a path are refused before
anything is written.
"""

from __future__ import annotations

import base64
import os
import pickle
from pathlib import Path

import pytest
import torch

from advloop.flows.config import ConfigError
from advloop.flows.deployments import stage_submission
from advloop.potentials.checkpoint import FORMAT, VERSION, CheckpointError, load_member
from advloop.potentials.model import EnergyModel, ModelSpec

SPEC = ModelSpec(n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0)
CONFIG = "system: {name: nh3-submitted, structures: nh3.xyz}\nlabels: {kind: emt}\n"
NH3_XYZ = (Path(__file__).resolve().parents[1] / "examples" / "structures" / "nh3.xyz").read_bytes()


class _MakesAFolder:
    """Unpickling this runs code: ``os.mkdir(folder)``."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (str(self.folder),)


def _check_the_payload_runs(data: bytes, folder: Path) -> None:
    pickle.loads(data)
    assert folder.is_dir()
    folder.rmdir()


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    folder = tmp_path / "code-ran"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": SPEC.to_dict(),
        "state_dict": EnergyModel(SPEC).state_dict(),
        "metrics": {},
        "extra": _MakesAFolder(folder),
    }
    path = tmp_path / "member_0.pt"
    torch.save(payload, path)
    _check_the_payload_runs(pickle.dumps(_MakesAFolder(folder)), folder)

    with pytest.raises(CheckpointError, match="not a readable advloop checkpoint.*weights_only"):
        load_member(path)
    assert not folder.exists()


def _submit(tmp_path: Path, name: str, data: bytes = NH3_XYZ) -> None:
    stage_submission(CONFIG, name, base64.b64encode(data).decode(), str(tmp_path / "out"), "label")


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(
    "name", ["../../x.xyz", "/tmp/advloop-absolute/x.xyz", "sub/x.xyz", "..", "."]
)
def test_a_submitted_structure_file_name_with_a_folder_is_refused(tmp_path, name):
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match="is not a plain file name"):
        _submit(tmp_path, name)
    assert _files(tmp_path) == before and not Path("/tmp/advloop-absolute").exists()
    assert not (
        tmp_path / "out" / "nh3-submitted" / "submissions" / "label" / "../../x.xyz"
    ).exists()


def test_a_plain_submitted_structure_file_name_stays_in_the_run_folder(tmp_path):
    _submit(tmp_path, "x.xyz")
    run_dir = (tmp_path / "out" / "nh3-submitted").resolve()
    assert {p.resolve() for p in _files(tmp_path) if p.is_file()} <= set(run_dir.rglob("*"))
    assert (run_dir / "submissions" / "label" / "x.xyz").read_bytes() == NH3_XYZ


def test_a_submitted_pickle_trajectory_is_refused_unrun(tmp_path):
    """ASE once read ``.traj`` files written by pickle (``PickleTrajectory``); its reader
    now refuses them, and so, through it, does a submission."""
    folder = tmp_path / "code-ran"
    pickled = pickle.dumps(_MakesAFolder(folder), protocol=2)
    _check_the_payload_runs(pickled, folder)
    with pytest.raises(ConfigError, match="could not be read"):
        _submit(tmp_path, "x.traj", b"PickleTrajectory" + pickled)
    assert not folder.exists()

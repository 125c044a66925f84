"""The labelling benchmark runs and reports every field (tiny sizes; timings not checked)."""

from __future__ import annotations

import math

from benchmarks.labelling import run


def test_labelling_benchmark_reports_every_field():
    out = run(
        quick=True,
        molecules=["H2"],
        repeats=1,
        reuse_molecule="H2",
        reuse_geometries=2,
        worker_molecule="H2",
        worker_structures=2,
    )
    (pbe, xtb) = out["seconds_per_label"]
    assert pbe["method"] == "RKS/PBE/6-31G*" and xtb["method"] == "GFN2-xTB"
    for row in out["seconds_per_label"]:
        assert row["failed"] == 0 and row["n_atoms"] == 2
        assert (
            math.isfinite(row["seconds_per_label_median"]) and row["seconds_per_label_median"] > 0
        )
    reuse = out["density_reuse"]
    assert reuse["with_reuse_scf_cycles"] > 0 and reuse["without_reuse_scf_cycles"] > 0
    assert reuse["max_energy_difference_eV"] < 1e-5  # reuse changes the cost, not the label
    assert (
        out["workers"]["workers_1_labels_per_s"] > 0
        and out["workers"]["workers_2_labels_per_s"] > 0
    )

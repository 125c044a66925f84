"""The figures of a run's artifacts as plain functions (no Prefect server): each is valid
SVG with a marker per point, atom or bond, its axis labels and units, escaped text, the
same text for the same input; and the markdown artifacts that embed them."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from advloop.flows.artifacts import FIGURES, figure_markdowns
from advloop.flows.figures import (
    PALETTE,
    calibration_svg,
    energy_distribution_svg,
    energy_groups,
    geometry_svg,
)
from advloop.flows.records import GenerationRecord
from advloop.potentials.dataset import Arrays, Provenance

NS = "{http://www.w3.org/2000/svg}"


def _svg(text: str) -> ET.Element:
    root = ET.fromstring(text)  # raises on anything that is not well-formed XML
    assert root.tag == f"{NS}svg"
    return root


def _marks(root: ET.Element, kind: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == kind]


def _texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


def _record(generation: int, sigmas: list[float], errors: list[float]) -> GenerationRecord:
    return GenerationRecord(
        generation=generation, calibration_sigmas=sigmas, calibration_errors=errors
    )


def test_calibration_draws_a_point_per_new_label_coloured_by_generation():
    records = [
        _record(0, [0.1, 0.2, 0.3], [0.15, 0.1, 0.5]),
        GenerationRecord(generation=1),  # trained only: no new labels
        _record(2, [0.05, 0.4], [0.02, 0.3]),
    ]
    text = calibration_svg(records)
    root = _svg(text)
    groups = {g.get("data-generation"): g for g in root.iter(f"{NS}g")}
    assert set(groups) == {"0", "2"}
    assert [len(_marks(groups[k], "point")) for k in ("0", "2")] == [3, 2]
    assert groups["0"].get("fill") == PALETTE[0] and groups["2"].get("fill") == PALETTE[1]
    texts = _texts(root)
    assert "predicted σF, mean over atoms (eV/Å)" in texts
    assert "actual force error (eV/Å)" in texts
    assert "error = σF" in texts  # the y = x line, from the origin to the axes' top corner
    [diagonal] = [e for e in root.iter(f"{NS}line") if e.get("stroke-dasharray")]
    assert float(diagonal.get("x1")) < float(diagonal.get("x2"))
    assert float(diagonal.get("y1")) > float(diagonal.get("y2"))
    assert "gen 0: 3 labels" in texts and "gen 2: 2 labels" in texts
    # a point where it belongs: σ 0.3 and error 0.5 is above the diagonal (over-confident)
    x = [float(c.get("cx")) for c in _marks(groups["0"], "point")]
    y = [float(c.get("cy")) for c in _marks(groups["0"], "point")]
    assert x == sorted(x) and y[2] < y[0] < y[1]
    assert calibration_svg(records) == text  # deterministic


def test_calibration_keeps_the_latest_generations_and_thins_each():
    records = [_record(g, [0.1] * 5, [0.2] * 5) for g in range(12)]
    records.append(_record(12, list(np.linspace(0.01, 1, 1000)), list(np.linspace(1, 0.01, 1000))))
    root = _svg(calibration_svg(records, most_generations=8, most_points=300))
    shown = [g.get("data-generation") for g in root.iter(f"{NS}g")]
    assert shown == [str(g) for g in range(5, 13)]
    assert len(_marks(root, "point")) == 7 * 5 + 300
    assert "gen 12: 1000 labels, 300 shown" in _texts(root)
    empty = _svg(calibration_svg([GenerationRecord(generation=0)]))
    assert not _marks(empty, "point") and "no new labels evaluated yet" in _texts(empty)


def test_energy_groups_put_initial_labels_first_and_measure_from_the_lowest():
    provenance = [
        Provenance(0, "adversarial", "EMT"),
        Provenance(0, "initial", "EMT"),
        Provenance(1, "random", "EMT"),
        Provenance(0, "imported", "EMT"),
        Provenance(0, "initial", "EMT"),
    ]
    energy = np.array([-8.0, -12.0, -4.0, -9.0, -11.0])  # eV, 4 atoms each but the last
    groups = energy_groups(energy, np.array([4, 4, 4, 4, 2]), provenance)
    assert [g.label for g in groups] == ["initial", "imported", "gen 0", "gen 1"]
    assert [g.indices for g in groups] == [(1, 4), (3,), (0,), (2,)]
    # per atom: -3, -5.5 (the lowest), -2.25, -1, -2 eV/atom
    assert groups[0].energies == pytest.approx((2.5, 0.0)) and groups[3].energies == (4.5,)
    assert energy_groups(np.zeros(0), np.zeros(0), []) == []


def test_energy_distribution_draws_a_column_per_batch_with_a_point_per_structure():
    groups = energy_groups(
        np.array([-12.0, -11.0, -10.0, -9.0, -8.0, -7.0, -6.0]),
        np.full(7, 4),
        [Provenance(0, "initial", "x")] * 4 + [Provenance(0, "adversarial", "x")] * 3,
    )
    text = energy_distribution_svg(groups)
    root = _svg(text)
    columns = {g.get("data-batch"): g for g in root.iter(f"{NS}g")}
    assert list(columns) == ["initial", "gen 0"]
    assert [len(_marks(g, "point")) for g in columns.values()] == [4, 3]
    assert len(list(root.iter(f"{NS}rect"))) == 1 + 2  # the background and a box per batch
    texts = _texts(root)
    assert "initial (4)" in texts and "gen 0 (3)" in texts
    assert "energy above the lowest (eV/atom)" in texts
    # the lowest structure at 0, the highest highest on the page (smallest y)
    ys = [float(c.get("cy")) for c in _marks(root, "point")]
    assert max(ys) == pytest.approx(float(root.get("height")) - 40, abs=0.1)
    assert min(ys) == ys[-1]
    assert energy_distribution_svg(groups) == text
    many = energy_groups(
        np.linspace(0, 1, 500), np.ones(500), [Provenance(0, "initial", "x")] * 500
    )
    assert len(_marks(_svg(energy_distribution_svg(many, most_points=200)), "point")) == 200
    assert "no labelled structures yet" in _texts(_svg(energy_distribution_svg([])))


def test_geometries_draw_atoms_in_element_colours_and_their_bonds():
    nh3, water = molecule("NH3"), molecule("H2O")
    text = geometry_svg([nh3, water], ["structure 7 <gen 1> & more\n0.1 eV/atom", "b"])
    root = _svg(text)
    panels = [g for g in root.iter(f"{NS}g") if g.get("data-structure") is not None]
    assert [len(_marks(p, "atom")) for p in panels] == [4, 3]
    assert [len(_marks(p, "bond")) for p in panels] == [3, 2]  # N-H ×3, O-H ×2; no H-H
    fills = {c.get("fill") for c in _marks(panels[0], "atom")}
    assert fills == {"#ffffff", "#3050f8"}  # Jmol: H white, N blue
    assert len(_marks(root, "legend")) == 3  # H, N, O
    texts = _texts(root)
    assert "structure 7 <gen 1> & more" in texts and "0.1 eV/atom" in texts  # escaped
    assert "&lt;gen 1&gt; &amp; more" in text
    assert "N" in texts and "O" in texts  # symbols on the heavy atoms
    # the view follows the molecule, not its orientation: a rotated copy draws the same
    turned = nh3.copy()
    turned.rotate(37, "z")
    turned.rotate(-50, "x")
    atoms = _marks(_svg(geometry_svg([nh3])), "atom")
    again = _marks(_svg(geometry_svg([turned])), "atom")
    assert sorted((a.get("fill"), a.get("r")) for a in atoms) == sorted(
        (a.get("fill"), a.get("r")) for a in again
    )
    assert geometry_svg([nh3, water], ["a", "b"]) == geometry_svg([nh3, water], ["a", "b"])
    # a single atom and no structure at all still draw
    assert len(_marks(_svg(geometry_svg([Atoms("Ar")])), "atom")) == 1
    assert "no labelled structures yet" in _texts(_svg(geometry_svg([])))


def test_figure_artifacts_embed_each_svg_as_a_data_uri():
    structures = [molecule("NH3") for _ in range(7)]
    for k, atoms in enumerate(structures):
        atoms.positions[0, 0] += 0.05 * k
    arrays = Arrays(
        numbers=np.concatenate([a.numbers for a in structures]),
        positions=np.concatenate([a.positions for a in structures]),
        forces=np.zeros((28, 3)),
        energy=-np.arange(7, dtype=float),
        n_atoms=np.full(7, 4),
        cell=np.zeros((7, 3, 3)),
        pbc=np.zeros((7, 3), dtype=bool),
    )
    provenance = [Provenance(0, "initial", "EMT")] * 2 + [Provenance(0, "adversarial", "EMT")] * 5
    records = [_record(0, [0.1, 0.2, 0.3, 0.1, 0.2], [0.2, 0.1, 0.3, 0.4, 0.1])]
    records[0].calibration_spearman, records[0].calibration_ratio = 0.5, 0.8
    texts = figure_markdowns("nh3<x>", records, arrays, provenance)
    assert list(texts) == list(FIGURES)

    def image(markdown: str) -> ET.Element:
        uri = re.search(r"\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
        assert uri, markdown
        return _svg(base64.b64decode(uri.group(1)).decode())

    assert texts["calibration"].startswith("# nh3<x>: calibration on new labels")
    assert len(_marks(image(texts["calibration"]), "point")) == 5
    assert "| 0 | 5 | 0.5 | 0.8 |" in texts["calibration"]
    assert len(_marks(image(texts["energies"]), "point")) == 7
    assert "| initial | 2 | 1.375 | 1.5 |" in texts["energies"]
    assert "| gen 0 | 5 | 0.5 | 1 |" in texts["energies"]
    # the latest batch's first four structures
    assert texts["geometries"].startswith("# nh3<x>: geometries of gen 0")
    assert "4 of the 5 structures labelled in gen 0" in texts["geometries"]
    drawn = image(texts["geometries"])
    assert len(_marks(drawn, "atom")) == 16
    assert "structure 2 (gen 0)" in _texts(drawn) and "structure 6 (gen 0)" not in _texts(drawn)

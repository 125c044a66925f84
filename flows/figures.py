"""The pictures of a run, as SVG text written here (no plotting library): the learning
curve, the calibration of the committee's σ_F on new labels, the energy distribution of
the labelled structures per generation, and a rendering of a few geometries.

Each function is a plain function of records, arrays or ``ase.Atoms`` and returns the
same text for the same input (no clock, no random numbers: points of a strip are spread
by a fixed sequence). Text is escaped; numbers are written with a fixed precision.
Markers carry a ``class`` (``point``, ``atom``, ``bond``) so that tests and styles can
find them.

Units: σ_F and force errors in eV/Å, energies in eV/atom, positions in Å.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii
from ase.data.colors import jmol_colors

from advloop.flows.records import GenerationRecord, finite
from advloop.flows.run_folder import IMPORTED, INITIAL_STRATEGIES
from advloop.potentials.dataset import Provenance

__all__ = [
    "PALETTE",
    "EnergyGroup",
    "calibration_svg",
    "energy_distribution_svg",
    "energy_groups",
    "geometry_svg",
    "learning_curve_svg",
]

#: Colours of series and generations, in order (Tableau 10, which stays apart for most
#: colour-vision deficiencies).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

# learning-curve series: (legend, record field, colour)
_SERIES = (
    ("σF of attacked geometries (mean)", "attack_sigma_f_mean", "#d62728"),
    ("validation force MAE", "train_val_forces_mae", "#1f77b4"),
)


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]


def _nice_top(hi: float, n: int = 4) -> tuple[float, float]:
    """(axis top, tick step) for an axis from 0 that holds ``hi`` in about ``n`` steps
    of 1, 2, 2.5 or 5 times a power of ten."""
    hi = hi if finite(hi) and hi > 0 else 1.0
    raw = hi / n
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return step * math.ceil(hi / step - 1e-9), step


def _close(out: list[str], note: str | None = None, at: tuple[float, float] = (0, 0)) -> str:
    """The SVG text of the elements ``out``, with ``note`` (grey, centred on ``at``) where
    there is nothing to draw."""
    if note is not None:
        out.append(
            f'<text x="{at[0]:.1f}" y="{at[1]:.1f}" text-anchor="middle" fill="gray">'
            f"{escape(note)}</text>"
        )
    return "\n".join([*out, "</svg>"])


@dataclass(frozen=True)
class _Frame:
    """A plot area of ``width`` × ``height`` px with margins, mapping data (x from ``x0``
    to ``x1``, y from 0 to ``ytop``) to pixels."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x0: float
    x1: float
    ytop: float

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    @property
    def centre(self) -> tuple[float, float]:
        return self.left + self.plot_w / 2, self.top + self.plot_h / 2

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / ((self.x1 - self.x0) or 1.0) * self.plot_w

    def y(self, v: float) -> float:
        return self.top + self.plot_h * (1 - v / (self.ytop or 1.0))

    def axes(self, xlabel: str, ylabel: str, ystep: float) -> list[str]:
        """Both axes, y ticks every ``ystep`` from 0 to ``ytop``, and the axis labels."""
        base, mid = self.top + self.plot_h, self.top + self.plot_h / 2
        out = [
            f'<line x1="{self.left}" y1="{base}" x2="{self.left + self.plot_w}" y2="{base}" '
            'stroke="black"/>',
            f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{base}" stroke="black"/>',
        ]
        for k in range(round(self.ytop / ystep) + 1):
            v = k * ystep
            out.append(
                f'<line x1="{self.left - 4}" y1="{self.y(v):.1f}" x2="{self.left}" '
                f'y2="{self.y(v):.1f}" stroke="black"/><text x="{self.left - 6}" '
                f'y="{self.y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>'
            )
        out.append(
            f'<text x="{self.left + self.plot_w / 2:.1f}" y="{self.height - 6}" '
            f'text-anchor="middle">{escape(xlabel)}</text>'
            f'<text x="14" y="{mid:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {mid:.1f})">{escape(ylabel)}</text>'
        )
        return out

    def xticks(self, ticks: Sequence[tuple[float, str]]) -> list[str]:
        base = self.top + self.plot_h
        return [
            f'<line x1="{self.x(v):.1f}" y1="{base}" x2="{self.x(v):.1f}" y2="{base + 4}" '
            f'stroke="black"/><text x="{self.x(v):.1f}" y="{base + 15}" '
            f'text-anchor="middle">{escape(label)}</text>'
            for v, label in ticks
        ]


def _legend(x: float, y: float, entries: Sequence[tuple[str, str]], line: bool) -> list[str]:
    """One legend row per (text, colour), from (``x``, ``y``) down: a line or a dot."""
    out = []
    for n, (text, colour) in enumerate(entries):
        ly = y + 13 * n
        mark = (
            f'<line x1="{x}" y1="{ly}" x2="{x + 18}" y2="{ly}" stroke="{colour}" stroke-width="2"/>'
            if line
            else f'<circle class="legend" cx="{x + 9}" cy="{ly}" r="4" fill="{colour}"/>'
        )
        out.append(f'{mark}<text x="{x + 22}" y="{ly + 4}">{escape(text)}</text>')
    return out


def learning_curve_svg(
    records: Sequence[GenerationRecord],
    threshold: float | None = None,
    width: int = 480,
    height: int = 260,
) -> str:
    """An SVG line chart of σ_F of the attacked geometries and the validation force MAE
    (both eV/Å) against generation, with ``threshold`` (eV/Å) as a dashed line."""
    gens = [r.generation for r in records] or [0]
    g0, g1 = min(gens), max(gens)
    values = [r.get(k) for r in records for _, k, _ in _SERIES if finite(r.get(k))]
    ytop, ystep = _nice_top(max(values + ([threshold] if threshold else []) + [1e-12]) * 1.05)
    f = _Frame(width, height, 60, 16, 34, 40, g0, max(g1, g0 + 1), ytop)
    out = _open(width, height, "learning curve")
    out += f.axes("generation", "eV/Å", ystep)
    stride = max(1, math.ceil((g1 - g0 + 1) / 12))
    out += f.xticks([(g, str(g)) for g in range(g0, g1 + 1, stride)])
    if threshold:
        out.append(
            f'<line x1="{f.left}" y1="{f.y(threshold):.1f}" x2="{f.left + f.plot_w}" '
            f'y2="{f.y(threshold):.1f}" stroke="gray" stroke-dasharray="5,4"/>'
            f'<text x="{f.left + f.plot_w - 2}" y="{f.y(threshold) - 4:.1f}" text-anchor="end" '
            f'fill="gray">convergence threshold</text>'
        )
    for _, key, colour in _SERIES:
        points = [(f.x(r.generation), f.y(r.get(key))) for r in records if finite(r.get(key))]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        out.extend(
            f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>'
            for px, py in points
        )
    out += _legend(f.left, 10, [(legend, colour) for legend, _, colour in _SERIES], line=True)
    return _close(out)


def _thin(n: int, most: int) -> list[int]:
    """At most ``most`` of the indices ``0 .. n-1``, evenly spread, first and last kept."""
    if n <= most:
        return list(range(n))
    return sorted({round(k * (n - 1) / (most - 1)) for k in range(most)})


def calibration_svg(
    records: Sequence[GenerationRecord],
    most_generations: int = 8,
    most_points: int = 300,
    size: int = 420,
) -> str:
    """A scatter plot of each new label's predicted σ_F against its actual force error
    (both the mean over its atoms, eV/Å; ``calibration_sigmas`` and
    ``calibration_errors`` of the records), one colour per generation, with the line
    σ_F = error: points above it are labels the committee was over-confident on.

    The latest ``most_generations`` generations that have calibration data are drawn, at
    most ``most_points`` labels of each (evenly spread over the generation's labels)."""
    series = [
        (r.generation, r.calibration_sigmas, r.calibration_errors)
        for r in records
        if r.calibration_sigmas
        and r.calibration_errors
        and len(r.calibration_sigmas) == len(r.calibration_errors)
    ][-most_generations:]
    values = [v for _, s, e in series for v in (*s, *e) if finite(v)]
    top, step = _nice_top(max(values + [1e-12]) * 1.05)
    f = _Frame(size, size, 64, 20, 20 + 13 * max(len(series), 1), 40, 0.0, top, top)
    out = _open(size, size, "calibration: predicted σF against actual force error")
    out += f.axes("predicted σF, mean over atoms (eV/Å)", "actual force error (eV/Å)", step)
    out += f.xticks([(k * step, f"{k * step:.3g}") for k in range(round(top / step) + 1)])
    out.append(
        f'<line x1="{f.x(0):.1f}" y1="{f.y(0):.1f}" x2="{f.x(top):.1f}" y2="{f.y(top):.1f}" '
        'stroke="gray" stroke-dasharray="5,4"/>'
        f'<text x="{f.x(top) - 4:.1f}" y="{f.y(top) + 14:.1f}" text-anchor="end" '
        'fill="gray">error = σF</text>'
    )
    entries = []
    for n, (generation, sigmas, errors) in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        pairs = [(s, e) for s, e in zip(sigmas, errors) if finite(s) and finite(e)]
        kept = [pairs[k] for k in _thin(len(pairs), most_points)]
        out.append(f'<g data-generation="{generation}" fill="{colour}" fill-opacity="0.75">')
        out.extend(
            f'<circle class="point" cx="{f.x(s):.1f}" cy="{f.y(e):.1f}" r="3.5"/>' for s, e in kept
        )
        out.append("</g>")
        shown = f", {len(kept)} shown" if len(kept) < len(pairs) else ""
        entries.append((f"gen {generation}: {len(pairs)} labels{shown}", colour))
    out += _legend(f.left, 14, entries, line=False)
    return _close(out, None if series else "no new labels evaluated yet", f.centre)


@dataclass(frozen=True)
class EnergyGroup:
    """The labelled structures of one batch: ``label`` (``initial``, ``imported``,
    ``gen 3``), their dataset ``indices`` and energies per atom above the dataset's
    lowest (eV/atom), in dataset order."""

    label: str
    indices: tuple[int, ...]
    energies: tuple[float, ...]


def energy_groups(
    energy: np.ndarray, n_atoms: np.ndarray, provenance: Sequence[Provenance]
) -> list[EnergyGroup]:
    """The dataset's structures by batch, initial labels first (then imported frames,
    then each generation's), with energy per atom above the lowest energy per atom of
    the dataset. ``energy`` [n_structures] eV, ``n_atoms`` [n_structures]."""
    if len(energy) == 0:
        return []
    per_atom = np.asarray(energy, dtype=float) / np.maximum(np.asarray(n_atoms), 1)
    above = per_atom - per_atom.min()
    batches: dict[tuple[int, str], list[int]] = {}
    for k, p in enumerate(provenance):
        if p.strategy in INITIAL_STRATEGIES:
            batch = (-2 if p.strategy != IMPORTED else -1, p.strategy)
        else:
            batch = (p.generation, f"gen {p.generation}")
        batches.setdefault(batch, []).append(k)
    return [
        EnergyGroup(label, tuple(idx), tuple(float(above[k]) for k in idx))
        for (_, label), idx in sorted(batches.items())
    ]


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.quantile(np.asarray(values, dtype=float), [0.25, 0.5, 0.75])
    return float(q1), float(q2), float(q3)


def energy_distribution_svg(
    groups: Sequence[EnergyGroup], most_points: int = 200, width: int = 520, height: int = 300
) -> str:
    """The energies per atom above the dataset's lowest (eV/atom) of each batch of labels
    (:func:`energy_groups`), a column each in order: every structure as a point (at most
    ``most_points`` a batch, evenly spread over its sorted energies), over a box from the
    lower to the upper quartile with the median and a whisker from lowest to highest."""
    values = [v for g in groups for v in g.energies]
    top, step = _nice_top(max(values + [1e-12]) * 1.05)
    n = max(len(groups), 1)
    f = _Frame(width, height, 64, 16, 20, 40, -0.5, n - 0.5, top)
    out = _open(width, height, "energy per atom of the labelled structures per batch")
    out += f.axes("batch of labels (structures)", "energy above the lowest (eV/atom)", step)
    stride = max(1, math.ceil(len(groups) / 12))
    out += f.xticks(
        [(k, f"{g.label} ({len(g.energies)})") for k, g in enumerate(groups) if k % stride == 0]
    )
    band = f.plot_w / n
    for k, group in enumerate(groups):
        colour = PALETTE[k % len(PALETTE)]
        cx, half = f.x(k), min(band * 0.3, 30)
        ordered = sorted(group.energies)
        if ordered:
            q1, q2, q3 = _quartiles(ordered)
            out.append(
                f'<line x1="{cx:.1f}" y1="{f.y(ordered[-1]):.1f}" x2="{cx:.1f}" '
                f'y2="{f.y(ordered[0]):.1f}" stroke="{colour}"/>'
                f'<rect x="{cx - half:.1f}" y="{f.y(q3):.1f}" width="{2 * half:.1f}" '
                f'height="{max(f.y(q1) - f.y(q3), 0.5):.1f}" fill="{colour}" fill-opacity="0.2" '
                f'stroke="{colour}"/><line x1="{cx - half:.1f}" y1="{f.y(q2):.1f}" '
                f'x2="{cx + half:.1f}" y2="{f.y(q2):.1f}" stroke="{colour}" stroke-width="2"/>'
            )
        out.append(f'<g data-batch={quoteattr(group.label)} fill="{colour}">')
        for j in _thin(len(ordered), most_points):
            spread = ((j * 0.6180339887) % 1.0 - 0.5) * 1.6 * half  # fixed, not random
            out.append(
                f'<circle class="point" cx="{cx + spread:.1f}" cy="{f.y(ordered[j]):.1f}" '
                'r="2.5" fill-opacity="0.8"/>'
            )
        out.append("</g>")
    return _close(out, None if groups else "no labelled structures yet", f.centre)


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * min(max(float(c), 0.0), 1.0)):02x}" for c in rgb)


def _projection(positions: np.ndarray) -> np.ndarray:
    """Positions [n_atoms, 3] (Å) in the frame of their principal axes, centred: columns
    the widest axis, the next, and the depth (towards the viewer). Each axis points so
    that its largest component is positive, so the view does not flip with round-off."""
    centred = positions - positions.mean(axis=0)
    if len(positions) < 2:
        return centred
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, ::-1].T.copy()  # rows: the axes, widest first
    for k in range(2):
        if axes[k][np.argmax(np.abs(axes[k]))] < 0:
            axes[k] = -axes[k]
    axes[2] = np.cross(axes[0], axes[1])
    return centred @ axes.T


def geometry_svg(
    structures: Sequence[Atoms],
    titles: Sequence[str] = (),
    panel: int = 220,
    bond_tolerance: float = 1.2,
) -> str:
    """Structures side by side, each projected on the plane of its two widest principal
    axes: atoms as circles (Jmol colours, radius from the covalent radius, the nearer
    ones drawn over the farther), bonds between atoms closer than ``bond_tolerance`` ×
    the sum of their covalent radii, the element's symbol on atoms large enough to hold
    it, and a title under each (``titles``, lines split on newlines). All panels share
    one scale (Å per pixel). Positions are drawn as stored: periodic images are not."""
    frames = [_projection(np.asarray(a.positions, dtype=float)) for a in structures]
    numbers = [np.asarray(a.numbers) for a in structures]
    margin, caption = 14, 30
    extent = max(
        [
            float(np.ptp(p[:, :2], axis=0).max()) + 2 * float(covalent_radii[z].max())
            for p, z in zip(frames, numbers)
            if len(p)
        ]
        + [1.0]
    )
    scale = (panel - 2 * margin) / extent  # px per Å
    elements = sorted({int(z) for zs in numbers for z in zs})
    width = panel * max(len(structures), 1)
    height = panel + caption + (22 if elements else 0)
    out = _open(width, height, "selected geometries")
    for k, (p, z) in enumerate(zip(frames, numbers)):
        ox, oy = panel * k + panel / 2, panel / 2

        def px(i: int, p=p, ox=ox, oy=oy) -> tuple[float, float]:
            return ox + scale * p[i, 0], oy - scale * p[i, 1]

        out.append(f'<g data-structure="{k}">')
        out.append(
            f'<rect x="{panel * k + 2}" y="2" width="{panel - 4}" height="{panel - 4}" '
            'fill="none" stroke="#dddddd"/>'
        )
        radii = covalent_radii[z]
        distance = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
        bonded = distance < bond_tolerance * (radii[:, None] + radii[None, :])
        for i, j in zip(*np.nonzero(np.triu(bonded, k=1))):
            (x1, y1), (x2, y2) = px(int(i)), px(int(j))
            out.append(
                f'<line class="bond" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                'stroke="#555555" stroke-width="3"/>'
            )
        for i in np.argsort(p[:, 2], kind="stable"):  # far first, near on top
            x, y = px(int(i))
            r = max(0.5 * scale * float(radii[i]), 3.0)
            colour = jmol_colors[z[i]]
            out.append(
                f'<circle class="atom" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" '
                f'fill="{_hex(colour)}" stroke="black" stroke-width="0.8"/>'
            )
            if r >= 7:
                ink = "black" if float(np.dot(colour, (0.299, 0.587, 0.114))) > 0.5 else "white"
                out.append(
                    f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" fill="{ink}" '
                    f'font-size="{min(r, 12):.0f}">{escape(chemical_symbols[z[i]])}</text>'
                )
        lines = titles[k].split("\n") if k < len(titles) else []
        for n, line in enumerate(lines[:2]):
            out.append(
                f'<text x="{ox:.1f}" y="{panel + 12 + 13 * n}" text-anchor="middle">'
                f"{escape(line)}</text>"
            )
        out.append("</g>")
    for n, element in enumerate(elements):  # the elements' colours, in a row at the bottom
        x, y = 12 + 60 * n, panel + caption + 10
        out.append(
            f'<circle class="legend" cx="{x}" cy="{y}" r="6" fill="{_hex(jmol_colors[element])}" '
            f'stroke="black" stroke-width="0.8"/><text x="{x + 10}" y="{y + 4}">'
            f"{escape(chemical_symbols[element])}</text>"
        )
    empty = None if structures else "no labelled structures yet"
    return _close(out, empty, (panel / 2, panel / 2))

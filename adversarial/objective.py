"""The adversarial objective of Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12,
5104, 2021), eq. 4:

    L(δ) = σ²(X+δ) · exp(−Ē(X+δ) / kT) / Q,     Q = ⟨exp(−E_i / kT)⟩_training set

σ² is the committee variance of the forces (default; averaged over atoms and Cartesian
components, eV²/Å²) or of the total energy (eV²); Ē is the committee-mean energy, total
(default) or per atom, with Q computed from the training energies in the same form; kT
is in eV. Everything is evaluated in the log domain (total energies of hundreds of eV
overflow ``exp``); adding a constant to every energy leaves L unchanged, since it cancels
between the numerator and Q.

The paper's reference code (learningmatter-mit/Atomistic-Adversarial-Attacks,
``robust/loss.py`` and ``robust/schnet/attacker.py``) uses the force variance, summed
over atoms and averaged over components, and the energy *per atom* in the Boltzmann
factor. advloop's default averages over atoms, so that the uncertainty is intensive and
comparable between systems (for one system the two differ by the constant factor N, which
Adam's step does not see), and uses the *total* energy, so that ``temperature`` is the
physical temperature of the Boltzmann weight; per-atom energies at temperature T weight
like total energies at N·T.

With ``sigma_target`` the uncertainty term saturates: σ² is replaced by
σ²σ_t²/(σ² + σ_t²), which grows like σ² while σ ≪ σ_t and levels off at σ_t², so that
once a geometry is as uncertain as the target the Boltzmann factor pulls it back towards
low energy instead of on to ever larger σ. This is calibrated-target optimisation in
the sense of Cezar et al. (npj Comput. Mater. 2025): the attack aims at geometries whose
*calibrated* error is a chosen value (σ_t = target error / calibration scale) rather
than at the largest σ the committee can be driven to, which on a small training set
lies at absurd geometries.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from ase.units import kB

__all__ = ["kT_from_temperature", "log_partition", "adversarial_objective"]

Uncertainty = Literal["forces", "energy"]
EnergyForm = Literal["total", "per_atom"]


def kT_from_temperature(temperature: float) -> float:
    """kT in eV for a temperature in K."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    return kB * temperature


def log_partition(
    train_energies: np.ndarray, kT: float, n_atoms: np.ndarray | None = None
) -> float:
    """log Q = log mean_i exp(−E_i/kT) over training energies [n_train] eV.

    With ``n_atoms`` [n_train], E_i is the energy per atom (for ``energy="per_atom"``).
    """
    e = np.asarray(train_energies, dtype=np.float64)
    if e.size == 0:
        raise ValueError("the partition function needs at least one training energy")
    if n_atoms is not None:
        e = e / np.asarray(n_atoms, dtype=np.float64)
    x = -e / kT
    m = x.max()
    return float(m + math.log(np.mean(np.exp(x - m))))


def adversarial_objective(
    energies: torch.Tensor,
    forces: torch.Tensor,
    idx_m: torch.Tensor,
    kT: float,
    log_q: float,
    uncertainty: Uncertainty = "forces",
    energy: EnergyForm = "total",
    sigma_target: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective L [n_structures] and the variance σ² [n_structures] it weights.

    energies [n_members, n_structures] eV, forces [n_members, n_atoms, 3] eV/Å, idx_m
    [n_atoms] the structure of each atom. σ² is the force variance (eV²/Å², mean over
    atoms and components) or, with ``uncertainty="energy"``, the energy variance (eV²);
    variances are unbiased (ddof=1) over members. Differentiable with respect to
    whatever the member energies and forces depend on. ``sigma_target`` (eV/Å, or eV
    for the energy variance): the saturating form of the module docstring; None: the
    paper's σ².
    """
    n_struct = energies.shape[1]
    dtype, device = forces.dtype, forces.device
    counts = torch.zeros(n_struct, dtype=dtype, device=device).index_add(
        0, idx_m, torch.ones(len(idx_m), dtype=dtype, device=device)
    )
    if uncertainty == "forces":
        var_atom = forces.var(dim=0).mean(dim=-1)  # [n_atoms]
        var = (
            torch.zeros(n_struct, dtype=dtype, device=device).index_add(0, idx_m, var_atom) / counts
        )
    elif uncertainty == "energy":
        var = energies.var(dim=0)
    else:
        raise ValueError(f"uncertainty must be 'forces' or 'energy', got {uncertainty!r}")
    e_mean = energies.mean(dim=0)
    if energy == "per_atom":
        e_mean = e_mean / counts.to(e_mean.dtype)
    elif energy != "total":
        raise ValueError(f"energy must be 'total' or 'per_atom', got {energy!r}")
    if sigma_target is None:
        log_u = torch.log(var)
    elif sigma_target > 0:
        t2 = sigma_target**2
        log_u = torch.log(var) + math.log(t2) - torch.log(var + t2)
    else:
        raise ValueError(f"sigma_target must be positive, got {sigma_target}")
    log_l = log_u - e_mean / kT - log_q
    return torch.exp(log_l), var

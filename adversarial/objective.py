"""The adversarial objective of Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12,
5104, 2021), eq. 4:

    L(δ) = σ²_F(X+δ) · exp(−Ē(X+δ) / kT) / Q,     Q = ⟨exp(−E_i / kT)⟩_training set

σ²_F is the committee variance of the forces averaged over atoms and Cartesian
components, Ē the committee-mean total energy (eV) and kT in eV. Everything is evaluated
in the log domain (total energies of hundreds of eV overflow ``exp``); adding a constant
to every energy leaves L unchanged, since it cancels between the numerator and Q.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.units import kB

__all__ = ["kT_from_temperature", "log_partition", "adversarial_objective"]


def kT_from_temperature(temperature: float) -> float:
    """kT in eV for a temperature in K."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    return kB * temperature


def log_partition(train_energies: np.ndarray, kT: float) -> float:
    """log Q = log mean_i exp(−E_i/kT) over training energies [n_train] eV."""
    e = np.asarray(train_energies, dtype=np.float64)
    if e.size == 0:
        raise ValueError("the partition function needs at least one training energy")
    x = -e / kT
    m = x.max()
    return float(m + math.log(np.mean(np.exp(x - m))))


def adversarial_objective(energies: torch.Tensor, forces: torch.Tensor, idx_m: torch.Tensor,
                          kT: float, log_q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective L [n_structures] and force variance σ²_F [n_structures] (eV²/Å²).

    energies [n_members, n_structures] eV, forces [n_members, n_atoms, 3] eV/Å, idx_m
    [n_atoms] the structure of each atom. Differentiable with respect to whatever the
    member energies and forces depend on.
    """
    n_struct = energies.shape[1]
    var_atom = forces.var(dim=0).mean(dim=-1)  # [n_atoms]
    ones = torch.ones_like(var_atom)
    counts = torch.zeros(n_struct, dtype=var_atom.dtype, device=var_atom.device).index_add(0, idx_m, ones)
    var_f = torch.zeros(n_struct, dtype=var_atom.dtype, device=var_atom.device).index_add(
        0, idx_m, var_atom) / counts
    log_l = torch.log(var_f) - energies.mean(dim=0) / kT - log_q
    return torch.exp(log_l), var_f

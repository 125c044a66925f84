"""The run configuration the GFN2-xTB benchmark systems share (sodalite with NH3,
malonaldehyde): a small PaiNN committee, xTB labels and, per strategy, the exploration the
published comparison ran, sized by the system's ``Sizes``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from advloop.adversarial.selection import SelectionSettings
from advloop.calculators.factory import TBLiteLabels
from advloop.flows.config import (
    AdversarialExploration,
    BudgetConfig,
    CommitteeConfig,
    ComputeConfig,
    ConfigError,
    InitialDataConfig,
    MDExploration,
    RandomExploration,
    RunConfig,
    SystemConfig,
)
from advloop.flows.inputs import check_inputs
from advloop.potentials.committee import Committee
from advloop.potentials.model import ModelSpec
from advloop.potentials.training import TrainingSettings
from benchmarks.ammonia_xtb import with_overrides
from benchmarks.measured_run import Measure

FRICTION = 0.02  # 1/fs, Langevin friction of the oracle and committee trajectories


def xtb_config(
    strategy: str,
    seed: int,
    root: Path,
    sizes,
    structure: Path,
    name: str,
    temperature: float,
    overrides: dict[str, dict] | None = None,
) -> RunConfig:
    """The run configuration of one strategy and seed, as ``name``, from ``structure``,
    exploring at ``temperature`` (K), with the ``overrides`` of an ablation (config
    section -> fields). ``sizes`` holds the counts (initial labels, model, committee,
    epochs, attack and MD steps, seeds, labels per generation, generations). Raises
    ConfigError on bad inputs."""
    config = RunConfig(
        system=SystemConfig(name=name, structures=structure),
        initial_data=InitialDataConfig(n_structures=sizes.n_initial, displacement=0.05, seed=seed),
        labels=TBLiteLabels(),
        model=ModelSpec(
            architecture="painn",
            n_atom_basis=sizes.n_atom_basis,
            n_interactions=sizes.n_interactions,
            n_rbf=20,
            cutoff=sizes.cutoff,
        ),
        committee=CommitteeConfig(n_members=sizes.n_members, seed=seed, warm_start=True),
        training=TrainingSettings(
            max_epochs=sizes.max_epochs,
            warm_start_epochs=sizes.warm_start_epochs,
            batch_size=8,
            learning_rate=0.002,
            val_fraction=0.2,
            patience=60,
        ),
        exploration={
            # per-atom energies at the test temperature: the attack reaches geometries about
            # kT per atom above the training set, where thermal ones are (3/2 kT per atom)
            "adversarial": AdversarialExploration(
                temperature=temperature,
                energy="per_atom",
                n_steps=sizes.attack_steps,
                learning_rate=0.01,
                initial_noise=0.02,
                max_displacement=0.6,
                seeds="random",
                n_seeds=sizes.n_explore_seeds,
            ),
            # Å, about the thermal rms at 1200 K
            "random": RandomExploration(std=0.1, seeds="random", n_seeds=sizes.n_explore_seeds),
            # DP-GEN's trust window, widened for committees of a few dozen labels (force
            # RMSE 0.3-0.7 eV/Å at 1200 K): with the default 0.5 eV/Å every early
            # trajectory stops before its first sample and md never gets a label
            "md": MDExploration(
                temperature=temperature,
                timestep=sizes.timestep,
                n_steps=sizes.explore_md_steps,
                friction=FRICTION,
                trust_mode="fixed",
                trust_lower=0.1,
                trust_upper=1.5,
                seeds="random",
                n_seeds=sizes.n_explore_seeds,
            ),
        }[strategy],
        selection=SelectionSettings(
            percentile=50.0, rmsd_threshold=0.02, max_selected=sizes.labels_per_generation
        ),
        budget=BudgetConfig(
            max_generations=sizes.generations,
            max_labels=max(1, sizes.generations * sizes.labels_per_generation),
        ),
        compute=ComputeConfig(torch_threads=1),
        output_dir=root,
    )
    config = with_overrides(config, overrides)
    problems = check_inputs(config)
    if problems:
        raise ConfigError(str(structure), problems)
    return config


def seeded_measure(
    metrics: Callable[[Committee, dict, object, np.random.Generator], dict],
    ref: dict,
    sizes,
    seed: int,
) -> Measure:
    """``metrics(committee, ref, sizes, rng)`` for :func:`benchmarks.measured_run.measured_run`,
    with MD velocities seeded by the committee seed and generation."""
    return lambda committee, g: metrics(committee, ref, sizes, np.random.default_rng([seed, g]))

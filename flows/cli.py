"""The ``advloop`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adversarial active learning for neural interatomic potentials.")

# Prefect settings this command needs unless the user set them: a closed network makes
# telemetry print errors, and a 2-core machine can need more than the default 20 s to
# start Prefect's embedded server. Set here, in the process entry point, before prefect
# is imported (the embedded server reads them from the environment).
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def use_prefect_defaults() -> None:
    """Set the Prefect settings above unless the user set them; call in a process entry
    point before prefect is imported."""
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _validated(config: Path, output_dir: Path | None):
    from flows.config import ConfigError, validate_config

    try:
        return validate_config(config, output_dir)
    except ConfigError as err:
        _fail(f"error: {err}")


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="run config (YAML)")]) -> None:
    """Check a config and its structure files; compute nothing."""
    from calculators.factory import level_of_theory

    cfg = _validated(config, None)
    typer.echo(f"{config}: valid. System {cfg.system.name!r}, "
               f"{cfg.committee.n_members} × {cfg.model.architecture} committee, "
               f"labels at {level_of_theory(cfg.labels, cfg.dft, cfg.periodic_dft)}; run folder {cfg.run_dir()}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    output_dir: Annotated[Path | None, typer.Option(help="parent of the run folder "
                                                    "(default: the config's output_dir, 'runs')")] = None,
) -> None:
    """Validate, then run (or resume) the active-learning loop on Prefect's embedded server."""
    cfg = _validated(config, output_dir)
    use_prefect_defaults()
    from flows.active_learning import run_active_learning
    from flows.steps import LabellingError

    try:
        run_active_learning(cfg)
    except LabellingError as err:
        _fail(f"error: {err}", code=1)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (runs/<system name>)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write")],
    format: Annotated[Literal["extxyz", "schnetpack"], typer.Option(
        help="extxyz (ase.io.read gives Atoms with energy and forces) or schnetpack "
             "(an ASEAtomsData database)")] = "extxyz",
) -> None:
    """Write a run's labelled dataset (DFT energies and forces) to a file."""
    from potentials.dataset import Dataset, DatasetError
    from potentials.run_layout import RunLayout

    try:
        dataset = Dataset(RunLayout(run_dir).dataset)
    except DatasetError as err:
        _fail(f"error: {err}")
    if format == "schnetpack":
        from potentials.interchange import export_asedata

        try:
            n = len(export_asedata(dataset, output))
        except FileExistsError as err:
            _fail(f"error: {err}")
    else:
        n = dataset.export_extxyz(output)
    typer.echo(f"wrote {n} structures to {output}")


"""A signal that lands inside Prefect's engine while it sets up a task run surfaces as the
engine's own error about the half-made run (``ValueError: Task run is not set``), raised
while handling the ``KeyboardInterrupt``. The run still ends as an interrupted run: the
flow run Cancelled with the message that says what is kept, not Failed."""

from __future__ import annotations

import io

from advloop.flows import interruptions
from advloop.flows.report import GenerationTable
from advloop.flows.validation import validate_config


def _engine_error_during_ctrl_c(*args, **kwargs):
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise ValueError("Task run is not set") from None  # as Prefect's task engine does


def test_a_signal_found_in_the_chain_is_told_apart() -> None:
    try:
        _engine_error_during_ctrl_c()
    except ValueError as err:
        assert isinstance(interruptions.interruption_in(err), KeyboardInterrupt)
    assert interruptions.interruption_in(ValueError("plain")) is None


def test_the_run_ends_cancelled_when_the_engine_reports_the_signal_as_its_own_error(
    prefect_backend, tiny_config, monkeypatch
) -> None:
    from advloop.flows import active_learning

    monkeypatch.setattr(active_learning, "prepare_initial", _engine_error_during_ctrl_c)
    config = validate_config(tiny_config)
    state = active_learning.run_active_learning(
        config, GenerationTable(io.StringIO()), return_state=True
    )
    assert state.is_cancelled(), state
    assert "re-run the same command to resume" in state.message


EXITING_LABELLER = '''
import sys

from ase.calculators.emt import EMT


class Exiting(EMT):
    """EMT that calls sys.exit(3) on its third structure, as a badly behaved calculator
    or library may."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls == 3:
            sys.exit(3)
        super().calculate(*args, **kwargs)


def make(**options):
    return Exiting()
'''


def test_a_system_exit_call_ends_the_run_crashed_saying_what_is_kept(
    prefect_backend, tiny_config
) -> None:
    """A calculator that calls ``sys.exit()`` mid-batch: Prefect alone would end the run
    "Execution was aborted by Python system exit call."; the run says what is kept and
    how to resume, and a re-run with a calculator that behaves recomputes nothing kept."""
    from advloop.flows import active_learning
    from advloop.flows.run_folder import RunLayout

    (tiny_config.parent / "exiting.py").write_text(EXITING_LABELLER)
    text = tiny_config.read_text()
    tiny_config.write_text(
        text.replace(
            "labels: {kind: pyscf, method: RHF, basis: STO-3G}",
            "labels: {kind: python, factory: 'exiting:make'}",
        )
    )
    config = validate_config(tiny_config)
    state = active_learning.run_active_learning(
        config, GenerationTable(io.StringIO()), return_state=True
    )
    assert state.is_crashed(), state
    layout = RunLayout(config.run_dir())
    assert state.message.startswith("stopped by a Python system exit call (exit code 3)")
    assert f"2 labels and 0 committees are kept in {layout.root}" in state.message
    assert "to resume" in state.message
    assert interruptions.exit_code(state) == 1

"""Fixtures shared by the flow tests: a tiny run config. (The Prefect backend,
``prefect_backend``, is in tests/conftest.py: the benchmark tests use it too.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.configs import EXAMPLES, TINY_CONFIG  # noqa: F401  (fixtures below; tests import them)


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="nh3-tiny",
            structures=EXAMPLES / "structures" / "nh3.xyz",
            output_dir=tmp_path / "runs",
        )
    )
    return path

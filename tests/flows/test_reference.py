"""docs/config.md, the configuration reference, is generated from the schema: it is
current, names every key of every section and kind with its unit and default, and a
stale copy is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import BaseModel

from advloop.flows import config as schema
from advloop.flows.reference import _sections, config_reference, main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_checked_in_reference_is_current():
    assert main(["--check", str(DOCS)]) == 0, (
        "regenerate: python -m advloop.flows.reference --write docs/config.md"
    )


def test_a_stale_reference_is_refused(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(config_reference().replace("| `n_seeds` |", "| `n_seed` |"))
    assert main(["--check", str(stale)]) == 1
    assert "--write" in capsys.readouterr().err


def _keys(cls: type) -> list[str]:
    if issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return [f.name for f in dataclasses.fields(cls)]


def test_every_key_of_every_section_and_kind_has_a_row():
    text = config_reference()
    sections = dict(schema.RunConfig.model_fields)
    missing = []
    for name, info in sections.items():
        for cls in _sections(info.annotation):
            for key in _keys(cls):
                if key == "kind" or key in schema.GEOMETRY_KEYS and name != "geometry":
                    continue
                if f"| `{key}` |" not in text:
                    missing.append(f"{name}.{key}")
    assert not missing
    # units and defaults come from the schema
    assert "| `max_displacement` | a number > 0 | Å | 0.6 |" in text
    assert "| `temperature` | a number > 0, or None | K | none |" in text  # system
    assert "### `exploration: {kind: hybrid}`" in text and "#### `exploration.md`" in text
    assert "| `pool_every` | an integer ≥ 0 |  | 10 |" in text


def test_the_examples_show_every_exploration_kind_and_each_is_a_valid_config():
    import re

    import yaml

    example = DOCS.parents[1] / "examples" / "ammonia.yaml"
    text = example.read_text()
    base = yaml.safe_load(text)
    shown = {base["exploration"]["kind"]}
    for block in re.findall(r"^# exploration:.*\n((?:#   .*\n)+)", text, re.MULTILINE):
        section = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
        config = schema.RunConfig.model_validate({**base, "exploration": section})
        shown.add(config.exploration.kind)
    kinds = {c.kind for c in _sections(schema.RunConfig.model_fields["exploration"].annotation)}
    assert shown == kinds

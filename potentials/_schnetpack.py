"""Import schnetpack on the torch this project pins.

schnetpack 2.0.4 and 2.1.1 do ``from torch.utils.data.dataloader import _collate_fn_t,
T_co`` at import time; ``T_co`` was removed from newer torch (2.13 fails to import
schnetpack). It is a plain covariant TypeVar, so defining it on the torch module before
the import restores the old behaviour. Remove this once schnetpack no longer imports it.

schnetpack 2.0.4 also calls ``logging.basicConfig`` at import (in
``schnetpack/md/parsers/orca_parser.py``), which attaches a handler to the root logger of
whatever program imports it and makes every library's INFO logs print. The root logger's
handlers and level are restored right after the import.

Import schnetpack from here, never directly.
"""

import logging
from typing import TypeVar

import torch.utils.data.dataloader as _dataloader

if not hasattr(_dataloader, "T_co"):
    # the shim puts back the name newer torch removed (its stubs have no T_co)
    _dataloader.T_co = TypeVar("T_co", covariant=True)  # type: ignore[attr-defined]

_root = logging.getLogger()
_handlers, _level = list(_root.handlers), _root.level

import schnetpack  # noqa: E402
import schnetpack.properties as spk_properties  # noqa: E402

for _handler in list(_root.handlers):
    if _handler not in _handlers:
        _root.removeHandler(_handler)
_root.setLevel(_level)

__all__ = ["schnetpack", "spk_properties"]

"""An ASE calculator whose configuration is one frozen settings dataclass."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from ase.calculators.calculator import Calculator, Parameters

__all__ = ["SettingsCalculator"]


class SettingsCalculator(Calculator):
    """Binds a frozen settings dataclass (``settings_class``) to an ASE calculator.

    Construct with ``settings=...`` or the settings' fields as keywords (not both);
    ``set(...)`` replaces fields and clears results when something changed. The settings
    must have a ``level_of_theory`` property.
    """

    settings_class: ClassVar[type]

    def __init__(
        self, settings: Any = None, *, directory: str | os.PathLike[str] = ".", **kwargs: Any
    ) -> None:
        if settings is not None and kwargs:
            raise TypeError(
                f"pass either settings={self.settings_class.__name__}(...) or its "
                "fields as keywords, not both"
            )
        self._settings = settings if settings is not None else self.settings_class(**kwargs)
        super().__init__(directory=directory)
        self.parameters = Parameters(dataclasses.asdict(self._settings))

    @property
    def settings(self) -> Any:
        """The frozen settings in use; change them with ``set(...)``."""
        return self._settings

    @property
    def level_of_theory(self) -> str:
        """Provenance string of the settings, e.g. ``"RKS/PBE/6-31G*"``."""
        return self._settings.level_of_theory

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Replace some settings (ASE's ``Calculator.set`` contract); clears results on change.

        Returns the settings that changed, name to new value. Raises TypeError on a keyword
        that is not a settings field and ValueError if the new combination is invalid.
        """
        if not kwargs:
            return {}
        new_settings = dataclasses.replace(self._settings, **kwargs)
        changed = {
            key: getattr(new_settings, key)
            for key in kwargs
            if getattr(self._settings, key) != getattr(new_settings, key)
        }
        self._settings = new_settings
        self.parameters = Parameters(dataclasses.asdict(new_settings))
        if changed:
            self.reset()
        return changed

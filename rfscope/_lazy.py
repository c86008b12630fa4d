"""Names that load on first use (PEP 562), for packages whose import must stay cheap.

``rfscope --help`` starts without importing torch, and the CLI turns a Ctrl-C while torch loads
into one line: so :mod:`rfscope` and :mod:`rfscope.probe` import their public names only when
they are first used.  This module imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, Sequence[str]], namespace: dict[str, Any],
               public: Sequence[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name in ``homes[module]`` comes from
    ``package.module``; any other name that is a submodule is imported; the value is then kept
    in the package's ``namespace`` so the lookup runs once."""
    home = {name: mod for mod, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in home:
            value = getattr(importlib.import_module(f".{home[name]}", package), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f".{name}", package)  # a submodule: rfscope.probe ...
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return __getattr__, __dir__

"""What leaves rfscope: Graphviz diagrams (:mod:`.dot`) and files written atomically (:mod:`.files`)."""

from rfscope.export.dot import *  # noqa: F403 - the diagram API is this package's API
from rfscope.export.dot import __all__ as _dot_all

__all__ = list(_dot_all)

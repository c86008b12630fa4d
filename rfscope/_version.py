"""rfscope's version, in the lowest layer so that any module (the JSON writers) can read it."""

__version__ = "0.1.0"

"""rfscope's built-in per-operation plugins (installed as ``rfscope.plugins``).

Each module defines ``register(registry)`` and is listed under the entry-point
group ``rfscope.plugins`` in pyproject.toml, the same way third-party plugins are.
"""

"""Passes over a traced graph: the interpreter that runs every node's plugin once and records the
result, then counts, design diagnostics and the initialisation check, which read those records."""

"""Layers rfscope ships for its examples and tests (capsule networks)."""

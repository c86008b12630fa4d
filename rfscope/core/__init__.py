"""The core: the receptive-field algebra, the per-tensor state, and the contract between plugins and rfscope.

Pure and small on purpose: nothing here traces, runs or reports a model.  See ``docs/design.md``.
"""

"""In-place ops in ATen graphs: reads after a write see the written values.

``torch.export`` keeps in-place ops (``aten.copy_``, ``aten.add_``...): one node writes a tensor
that other nodes, later in the graph, read through the *old* node or through a view taken before
the write.  The data flow of the graph then misses the write.  This pass makes it visible:

- a later read of the written tensor itself reads the in-place node instead (which returns that
  tensor, so the program is unchanged);
- a later read of another alias (a view taken before, or the base of a written view) is marked
  ``unknown`` with the reason, rather than analysed with stale values, unless nothing involved
  depends on the input (a constant mask built by slice writes stays a constant).

See docs/design.md §3, step 4 ("In-place writes").

>>> import torch, torch.fx as fx
>>> g = fx.Graph(); x = g.placeholder("x"); y = g.call_function(torch.ops.aten.mul.Tensor, (x, 2.0))
>>> w = g.call_function(torch.ops.aten.add_.Tensor, (y, 1.0))
>>> _ = g.output(g.call_function(torch.ops.aten.neg.default, (y,)))
>>> follow_writes(fx.GraphModule(torch.nn.Module(), g)); [str(u.target) for u in w.users]
['aten.neg.default']
"""

from __future__ import annotations

import torch.fx as fx

from rfscope.trace.aliasing import input_dependent, is_view, returns_written, written_args

__all__ = ["follow_writes", "UNKNOWN_META"]

#: the meta key the interpreter reads: the node's result is ``unknown`` for this reason
UNKNOWN_META = "rfscope_unknown"


def follow_writes(gm: fx.GraphModule) -> None:
    """Rewire or mark the reads that follow an in-place write (module docstring)."""
    nodes = list(gm.graph.nodes)
    if not any(written_args(n) for n in nodes):
        return  # no in-place op (every graph symbolic_trace makes): nothing to do
    order = {n: i for i, n in enumerate(nodes)}
    live = input_dependent(gm)
    for n in nodes:
        for dst in written_args(n):
            base = dst
            while is_view(base) and base.args and isinstance(base.args[0], fx.Node):
                base = base.args[0]
            family, todo = {base}, [base]
            while todo:  # every view of the base shares its memory
                for u in todo.pop().users:
                    if u not in family and is_view(u):
                        family.add(u)
                        todo.append(u)
            for m in family:
                for u in list(m.users):
                    if u is n or order.get(u, -1) <= order[n]:
                        continue
                    if m is dst and returns_written(n):
                        u.replace_input_with(dst, n)  # n returns dst itself, now written
                    elif n in live or base in live:  # constants written into constants stay constants
                        u.meta.setdefault(UNKNOWN_META, f"reads {m.name} after {n.name} ({n.target}) "
                                                        "wrote it in place through another view")

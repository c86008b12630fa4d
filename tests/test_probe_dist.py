"""Under torch.distributed (two CPU processes, gloo) the ERF equals the single-process one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import torch
import torch.nn as nn

from rfscope.probe import erf

WORKER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=rank, world_size=2)
    from rfscope.probe import erf

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))
    r = erf(net, node="2", input_shape=(1, 2, 18, 18), samples=7, batch_size=2, device="cpu",
            progress=False, dtype=torch.float64, seed=5)
    assert r.conventions["world_size"] == 2
    np.save(os.path.join(sys.argv[2], f"rank{rank}.npy"), r.map)
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_ranks_equal_single_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, str(script), port, str(tmp_path)],
                         env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2))
    single = erf(net, node="2", input_shape=(1, 2, 18, 18), samples=7, batch_size=2, device="cpu",
                 progress=False, dtype=torch.float64, seed=5).map
    for rank in (0, 1):
        m = np.load(tmp_path / f"rank{rank}.npy")
        assert np.allclose(m, single, rtol=1e-12, atol=1e-12)
    assert single.sum() > 0

"""A notebook shows a Report as the table and the diagram inline (issue 16, "Notebooks").

The notebook is built with nbformat and executed with nbclient on the ``python3`` kernel that
ipykernel installs into this environment (both come with the ``test`` extra).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    "import rfscope, torch.nn as nn",
    "net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))\n"
    "r = rfscope.analyze(net, input_shape=(1, 3, 16, 16))\n"
    "r",
    "from rfscope.export import find_renderer\nprint(find_renderer() is not None)",
    "r.to_dataframe()",
]


def test_notebook_shows_the_table_and_the_diagram(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    path = tmp_path / "report.ipynb"
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    from jupyter_client.kernelspec import KernelSpecManager

    assert "python3" in KernelSpecManager().find_kernel_specs(), "no python3 kernel: pip install ipykernel"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=60, startup_timeout=60,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except (RuntimeError, TimeoutError) as e:  # the kernel never answered (no local sockets here)
        if "Kernel didn't respond" in str(e) or "kernel_info" in str(e):
            pytest.skip(f"no Jupyter kernel can start on this machine: {e}")
        raise
    shown = [o for o in nb.cells[1].outputs if o.output_type == "execute_result"]
    assert len(shown) == 1
    data = shown[0]["data"]
    assert data["text/plain"].startswith("<rfscope.Report Sequential input=1x3x16x16 nodes=3 ")
    html = data["text/html"]
    assert "<table" in html
    for label in ("input", "0", "1", "2"):  # Sequential's forward argument is "input"
        assert f'">{label}</td>' in html
    has_renderer = nb.cells[2].outputs[0]["text"].strip() == "True"
    if has_renderer:
        svg = data["image/svg+xml"]
        assert ET.fromstring(svg).tag.endswith("svg")
        assert svg in html  # the diagram above the table in the HTML a notebook shows
    else:
        assert "image/svg+xml" not in data
    frame = nb.cells[3].outputs[0]["data"]
    assert "text/html" in frame and "rf_size_h" in frame["text/html"]

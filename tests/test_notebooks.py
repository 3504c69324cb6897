"""Every notebook under notebooks/ runs from top to bottom, so none of them can rot.

Each notebook is executed in memory (the committed file is never written) with its own folder as the working
directory, as Jupyter runs it, and the executed copy is saved under the test's temporary folder for a look
after a failure. Notebooks are committed without outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

# What a notebook must show beyond running without errors: images (at least), and texts in its outputs.
EXPECTED_IMAGES = {"detection_quality.ipynb": 1}
EXPECTED_TEXT = {
    "detection_quality.ipynb": (
        "AUROC",
        "benign flagged",
        "harmful flagged",
        "recall > 0.5",
        "attack_sessions_stopped",
        "without task",
    )
}


def _use_this_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A `python3` kernelspec that runs this interpreter (the venv with `risk` and ipykernel installed).

    JUPYTER_PATH comes first in the kernelspec search, so a `python3` kernel installed for the user or the
    system (pointing at another Python) cannot shadow it, and nothing needs installing by hand.
    """
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's notice about its path migration


def _outputs(nb: Any) -> list[Any]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def _texts(output: Any) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
    data = output.get("data", {})
    return [v if isinstance(v, str) else "".join(v) for k, v in data.items() if k.startswith("text/")]


def test_there_are_notebooks() -> None:
    assert PATHS, f"no notebooks under {NOTEBOOKS}"
    assert set(EXPECTED_TEXT) | set(EXPECTED_IMAGES) <= {p.name for p in PATHS}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, f"{path.name}: clear the outputs of cells {with_outputs} before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_this_python(monkeypatch, tmp_path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,  # per cell
        startup_timeout=120,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    nbformat.write(nb, tmp_path / path.name)

    outputs = _outputs(nb)
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= EXPECTED_IMAGES.get(path.name, 0), f"{path.name}: {images} images"
    text = "\n".join(t for o in outputs for t in _texts(o))
    missing = [t for t in EXPECTED_TEXT.get(path.name, ()) if t not in text]
    assert not missing, f"{path.name}: outputs lack {missing}"

"""Running the workbench's notebooks unattended with papermill (CI, `make notebooks`).

Each notebook runs in a named kernel with a per-cell timeout, in its own folder (so it
finds the workbench by walking up to params.yaml), and is written executed into an output
folder that git ignores. The first failing notebook stops the run. With tiny parameters
(``notebooks/tiny-params.yaml``) the tiny models are built first if they are missing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from harmonia.errors import HarmoniaError
from harmonia.snapshots import list_snapshots
from harmonia.workbench import Workbench

KERNEL = "harmonia"
TINY_PARAMS = "tiny-params.yaml"
DEFAULT_TIMEOUT_S = 600


class NotebookError(HarmoniaError, RuntimeError):
    """A notebook failed under papermill.

    Example message:
        notebooks/02_compare.ipynb failed in cell 3 (KeyError: 'x'); the executed copy with the
        traceback is outputs/notebooks/02_compare.ipynb.
    """


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook."""

    source: Path
    output: Path
    parameters: dict
    seconds: float


def ensure_kernel(name: str = KERNEL) -> str:
    """Install a kernelspec ``name`` for this Python (in its prefix) unless one exists."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name=f"Harmonia ({Path(sys.prefix).name})", prefix=sys.prefix)
    return name


def notebook_parameters(wb: Workbench, tiny: bool) -> dict[str, dict]:
    """Per-notebook parameters: those of notebooks/tiny-params.yaml with ``tiny``, else none."""
    if not tiny:
        return {}
    path = wb.root / "notebooks" / TINY_PARAMS
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise NotebookError(f"{path} must map notebook names to parameters.")
    return data


def build_missing_tiny_models(wb: Workbench) -> list[str]:
    """Build every synthetic model and dataset params.yaml declares that is not present; return their names."""
    from harmonia.datasets import build_dataset
    from harmonia.tiny import build_tiny

    builders = {"model": build_tiny, "dataset": build_dataset}
    built = []
    for kind, build in builders.items():
        for row in list_snapshots(wb, kind):
            spec = wb.specs(kind).get(row.name)
            if spec is not None and spec.synthetic and not row.present:
                build(wb, spec.builder, name=spec.name, seed=spec.seed or 0)
                built.append(spec.name)
    return built


def run_notebooks(
    wb: Workbench,
    out_dir: Path,
    names: list[str] | None = None,
    tiny: bool = False,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    kernel: str = KERNEL,
    say=print,
) -> list[NotebookRun]:
    """Execute the workbench's notebooks (all of ``notebooks/*.ipynb`` by default) with papermill.

    Args:
        wb: the workbench.
        out_dir: where the executed copies go.
        names: notebook file names to run (default: all, in name order).
        tiny: use notebooks/tiny-params.yaml and build missing tiny models first.
        timeout_s: per-cell execution timeout.
        kernel: the kernel name (installed for this Python if missing).

    Raises:
        NotebookError: the first notebook that fails; its executed copy shows the traceback.
    """
    import time

    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = wb.root / "notebooks"
    sources = sorted(folder.glob("*.ipynb")) if not names else [folder / n for n in names]
    for path in sources:
        if not path.is_file():
            known = ", ".join(p.name for p in sorted(folder.glob("*.ipynb")))
            raise NotebookError(f"No notebook {path.name} in {folder}. Known: {known}.")
    parameters = notebook_parameters(wb, tiny)
    if tiny:
        for name in build_missing_tiny_models(wb):
            say(f"built tiny model {name}")
    ensure_kernel(kernel)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for path in sources:
        params = parameters.get(path.name, {})
        output = out_dir / path.name
        say(f"running {path.relative_to(wb.root)} -> {output}")
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=params,
                kernel_name=kernel,
                cwd=str(folder),
                execution_timeout=timeout_s,
                progress_bar=False,
                log_output=False,
            )
        except PapermillExecutionError as exc:
            raise NotebookError(
                f"{path.relative_to(wb.root)} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
                f"the executed copy with the traceback is {output}."
            ) from None
        runs.append(NotebookRun(path, output, params, time.perf_counter() - started))
    return runs


def outputs_of(path: Path) -> list[int]:
    """Indexes of code cells that carry outputs or execution counts (committed notebooks must have none)."""
    nb = json.loads(path.read_text())
    return [
        i
        for i, cell in enumerate(nb.get("cells", []))
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]

"""Harmonia: a research workbench for local, reproducible generation of music.

The public API, in pipeline order:

- :class:`Workbench` finds the workbench root and reads params.yaml (workbench.py);
- :func:`fetch` downloads a model or dataset snapshot at a pinned commit (hub.py);
- :func:`verify` and :func:`list_snapshots` check and list snapshots (snapshots.py);
- :func:`harmonia.tiny.build_tiny` builds tiny random models for tests and offline demos.

Example:
    >>> import harmonia
    >>> wb = harmonia.Workbench.open()  # doctest: +SKIP
    >>> harmonia.verify(wb, "model", "tiny-musicgen").ok  # doctest: +SKIP
    True
"""

from harmonia.errors import HarmoniaError
from harmonia.hub import FetchResult, fetch
from harmonia.inventory import Inventory, read_inventory
from harmonia.snapshots import SnapshotStatus, VerifyReport, list_snapshots, verify
from harmonia.workbench import Workbench

__version__ = "0.1.0"

__all__ = [
    "FetchResult",
    "HarmoniaError",
    "Inventory",
    "SnapshotStatus",
    "VerifyReport",
    "Workbench",
    "__version__",
    "fetch",
    "list_snapshots",
    "read_inventory",
    "verify",
]

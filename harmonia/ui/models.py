"""The models panel: local snapshots with source, license and verification; verify; fetch."""

from __future__ import annotations

import html

import ipywidgets as widgets

from harmonia.hub import fetch
from harmonia.snapshots import list_snapshots, verify
from harmonia.ui.views import Task, status_html
from harmonia.workbench import KINDS, Workbench, plural


class ModelsPanel:
    """Display it in a notebook cell.

    Example:
        >>> panel = ModelsPanel()  # doctest: +SKIP
        >>> panel.verify_all_button.click(); panel.wait()  # doctest: +SKIP
    """

    def __init__(self, wb: Workbench | None = None, endpoint: str | None = None):
        self.wb = wb or Workbench.open()
        self.endpoint = endpoint  # the hub's URL (default: HF_ENDPOINT or huggingface.co)
        self.table = widgets.HTML()
        self.full = widgets.Checkbox(value=False, description="full (re-hash everything)", indent=False)
        self.verify_all_button = widgets.Button(description="Verify all", icon="check")
        self.fetch_name = widgets.Dropdown(description="fetch")
        self.fetch_button = widgets.Button(description="Fetch", icon="download")
        self.progress = widgets.FloatProgress(value=0, min=0, max=1, layout=widgets.Layout(width="240px"))
        self.status = widgets.HTML()
        self.log = widgets.Output()
        self._task = Task(self.status, self.log)
        self.verify_all_button.on_click(lambda _: self.verify_all())
        self.fetch_button.on_click(lambda _: self.fetch())
        self.widget = widgets.VBox(
            [
                widgets.HTML("<h3 style='margin:0'>Models and datasets</h3>"),
                self.table,
                widgets.HBox([self.verify_all_button, self.full, self.progress]),
                widgets.HBox([self.fetch_name, self.fetch_button]),
                self.status,
                self.log,
            ]
        )
        self.widget.add_class("harmonia-models")
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def refresh(self) -> None:
        rows = [r for kind in KINDS for r in list_snapshots(self.wb, kind)]
        head = (
            "<tr>"
            + "".join(
                f"<th>{h}</th>" for h in ("kind", "name", "source", "revision", "size", "license", "verified")
            )
            + "</tr>"
        )
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    r.kind,
                    r.name,
                    r.source,
                    (r.revision or "-")[:12],
                    f"{r.size / 1e6:.1f} MB" if r.size is not None else "-",
                    r.license or "-",
                    r.verified + (f" {r.verified_at}" if r.verified_at else ""),
                )
            )
            + "</tr>"
            for r in rows
        )
        self.table.value = f"<table class='harmonia-snapshots'>{head}{body}</table>"
        fetchable = [(f"{r.kind} {r.name}", (r.kind, r.name)) for r in rows if r.source.startswith("hf:")]
        self.fetch_name.options = fetchable or [("nothing to fetch", None)]

    def verify_all(self):
        """Verify every present snapshot in a worker thread, with a bytes progress bar."""
        targets = [(r.kind, r.name) for kind in KINDS for r in list_snapshots(self.wb, kind) if r.present]
        full = self.full.value

        def work() -> str:
            results = [
                verify(self.wb, kind, name, full=full, progress=self._bytes_bar()) for kind, name in targets
            ]
            self.refresh()
            failed = [r.summary() for r in results if not r.ok]
            if failed:
                return "; ".join(failed), "error"
            return f"{len(results)} snapshots ok." if results else "no snapshots present."

        return self._task.start(work)

    def _bytes_bar(self):
        """A progress callback for one snapshot's hashing: bytes done out of bytes to hash."""
        seen = 0

        def step(n: int, total: int) -> None:
            nonlocal seen
            seen += n
            self.progress.max, self.progress.value = max(total, 1), seen

        return step

    def fetch(self):
        """Fetch the chosen declared snapshot in a worker thread."""
        if self.fetch_name.value is None:
            self.status.value = status_html("Nothing to fetch: declare hub models in params.yaml.", "error")
            return None
        kind, name = self.fetch_name.value
        self.status.value = status_html(f"fetching {kind} {name}…")

        def work() -> str:
            result = fetch(self.wb, kind, name, endpoint=self.endpoint)
            self.refresh()
            src = result.inventory.source
            verb = "already present" if result.reused else "fetched"
            return f"{verb}: {plural(kind)}/{name} = {src.repo}@{src.revision}"

        return self._task.start(work)

    def wait(self, timeout: float | None = None) -> None:
        self._task.wait(timeout)

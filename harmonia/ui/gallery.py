"""The gallery: recent artifacts, filtered by model, prompt and date; play, read, reproduce, compare,
and slice an audio artifact into a sample pack."""

from __future__ import annotations

import datetime as dt

import ipywidgets as widgets

from harmonia.artifacts import Artifact, list_artifacts, load_artifact
from harmonia.errors import RequestError
from harmonia.generation import From, derive, reproduce
from harmonia.requests import SliceRequest
from harmonia.ui.views import Task, ab_view, artifact_view, manifest_html, status_html
from harmonia.workbench import Workbench

ALL = "(all models)"


class Gallery:
    """Browse ``artifacts/``. Display it in a notebook cell.

    Example:
        >>> gallery = Gallery()  # doctest: +SKIP
        >>> gallery.prompt_filter.value = "piano"; gallery.select(gallery.ids()[:2]); gallery.ab_button.click()  # doctest: +SKIP
    """

    def __init__(self, wb: Workbench | None = None, limit: int = 200):
        self.wb = wb or Workbench.open()
        self.limit = limit
        self._all: list[Artifact] = []
        self.model_filter = widgets.Dropdown(options=[ALL], description="model")
        self.prompt_filter = widgets.Text(description="prompt", placeholder="words in the prompt")
        self.since = widgets.DatePicker(description="since")
        self.refresh_button = widgets.Button(
            icon="refresh", tooltip="reload artifacts/", layout=widgets.Layout(width="40px")
        )
        self.items = widgets.SelectMultiple(rows=10, layout=widgets.Layout(width="100%"))
        self.play_button = widgets.Button(description="Play", icon="play")
        self.manifest_button = widgets.Button(description="Manifest", icon="file")
        self.reproduce_button = widgets.Button(description="Reproduce", icon="repeat")
        self.ab_button = widgets.Button(description="A/B", icon="columns")
        self.slice_button = widgets.Button(
            description="Slice into a pack", icon="cut", tooltip="one-shots and loops of the selected audio"
        )
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="200px"))
        self.status = widgets.HTML()
        self.log = widgets.Output()
        self.view = widgets.VBox()
        self._task = Task(self.status, self.log)

        for w in (self.model_filter, self.prompt_filter, self.since):
            w.observe(lambda _: self._apply_filters(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.play_button.on_click(lambda _: self.play())
        self.manifest_button.on_click(lambda _: self.show_manifest())
        self.reproduce_button.on_click(lambda _: self.reproduce())
        self.ab_button.on_click(lambda _: self.ab())
        self.slice_button.on_click(lambda _: self.slice())
        self.widget = widgets.VBox(
            [
                widgets.HTML("<h3 style='margin:0'>Artifacts</h3>"),
                widgets.HBox([self.model_filter, self.prompt_filter, self.since, self.refresh_button]),
                self.items,
                widgets.HBox(
                    [
                        self.play_button,
                        self.manifest_button,
                        self.reproduce_button,
                        self.ab_button,
                        self.slice_button,
                        self.progress,
                    ]
                ),
                self.status,
                self.view,
                self.log,
            ]
        )
        self.widget.add_class("harmonia-gallery")
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def refresh(self) -> None:
        """Reload artifacts/ (newest first) and the model list."""
        self._all = list_artifacts(self.wb)[: self.limit]
        models = sorted({a.model for a in self._all})
        current = self.model_filter.value
        self.model_filter.options = [ALL, *models]
        self.model_filter.value = current if current in models else ALL
        self._apply_filters()

    def _apply_filters(self) -> None:
        words = self.prompt_filter.value.lower().split()
        since = self.since.value
        shown = []
        for a in self._all:
            prompts = " ".join(o.prompt or "" for o in a.outputs).lower()
            if self.model_filter.value not in (ALL, a.model):
                continue
            if words and not all(w in prompts for w in words):
                continue
            if since and dt.date.fromisoformat(a.created[:10]) < since:
                continue
            shown.append(a)
        self.items.options = [(self._label(a), a.id) for a in shown]

    @staticmethod
    def _label(a: Artifact) -> str:
        prompt = a.outputs[0].prompt if a.outputs else ""
        prompt = prompt if len(prompt or "") <= 60 else prompt[:59] + "…"
        nc = "  [non-commercial]" if a.manifest.non_commercial else ""
        return f"{a.id}  {a.created}  {a.kind}  {a.model}  seed {a.seed}{nc}  {prompt}"

    def ids(self) -> list[str]:
        """The ids the filters let through, newest first."""
        return [value for _, value in self.items.options]

    def select(self, ids: list[str]) -> None:
        self.items.value = tuple(ids)

    def _selected(self, count: int | None = None) -> list[Artifact]:
        chosen = list(self.items.value)
        if count is not None and len(chosen) != count:
            raise RequestError(
                f"pick exactly {count} artifact{'s' if count > 1 else ''} for this (selected: {len(chosen)})."
            )
        if not chosen:
            raise RequestError("pick an artifact in the list first.")
        return [load_artifact(self.wb, i) for i in chosen]

    def _guard(self, action) -> None:
        try:
            self.status.value = ""
            action()
        except RequestError as exc:
            self.status.value = status_html(str(exc), "error")

    def play(self) -> None:
        self._guard(lambda: setattr(self.view, "children", [artifact_view(self._selected()[0])]))

    def show_manifest(self) -> None:
        self._guard(
            lambda: setattr(self.view, "children", [widgets.HTML(manifest_html(self._selected()[0]))])
        )

    def ab(self) -> None:
        self._guard(lambda: setattr(self.view, "children", [ab_view(*self._selected(2))]))

    def reproduce(self):
        """Regenerate the selected artifact in a worker thread and show the verdict."""
        try:
            (art,) = self._selected(1)
        except RequestError as exc:
            self.status.value = status_html(str(exc), "error")
            return None
        self.status.value = status_html(f"reproducing {art.id}…")

        def step(done: int, total: int) -> None:
            self.progress.max, self.progress.value = total, done

        def work() -> str:
            verdict = reproduce(self.wb, art.id, progress=step)
            lines = [verdict.summary(), *(f"differs: {d}" for d in verdict.differences)]
            return "; ".join(lines), "ok" if verdict.verified else "error"

        return self._task.start(work)

    def slice(self):
        """Cut the selected artifact's first audio take into a pack (a child artifact), in a worker thread."""
        try:
            (art,) = self._selected(1)
        except RequestError as exc:
            self.status.value = status_html(str(exc), "error")
            return None
        self.status.value = status_html(f"slicing {art.id}…")

        def work() -> str:
            done = derive(self.wb, "slicer", SliceRequest(source=From(art.id), zip=True))
            self.last_pack = done.artifact
            facts = done.artifact.manifest.engine.details
            self.view.children = [artifact_view(done.artifact, takes=8)]
            self.refresh()
            verb = "Found" if done.cached else "Made"
            return (
                f"{verb} pack {done.artifact.id} from {art.id}: {facts['one_shots']} one-shots, "
                f"{facts['loops']} loops (pack.zip in {done.artifact.path})."
            )

        return self._task.start(work)

    def wait(self, timeout: float | None = None) -> None:
        self._task.wait(timeout)

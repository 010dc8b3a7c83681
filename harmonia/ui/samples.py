"""The samples view: a prompt, a type (one-shot, loop, sfx), a tempo and bars, takes; a grid of takes.

Each take in the grid has a player, its waveform and a loop toggle (so a loop can be heard
wrapping around its seam). Generation runs in a worker thread through the same
:func:`~harmonia.generation.generate` as ``harmonia generate sample``; Stop ends it at the
next denoising step and nothing is written.
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as widgets

from harmonia.artifacts import Artifact
from harmonia.defaults import kind_defaults
from harmonia.engines.base import choose_seed
from harmonia.errors import HarmoniaError, RequestError
from harmonia.generation import Generated, generate
from harmonia.requests import SAMPLE_TYPES, SampleRequest, limits
from harmonia.snapshots import list_snapshots
from harmonia.ui.views import Task, picture, player, read_take, status_html, summary_html
from harmonia.workbench import Workbench

PROGRESS_EVERY_S = 0.05
ENGINE = "stable-audio"


def take_cell(art: Artifact, index: int) -> widgets.VBox:
    """One take: its name and prompt, a player, a loop toggle and its waveform/spectrogram."""
    out = art.outputs[index]
    samples, rate = read_take(art.file(out))
    audio = player(art.file(out))
    loop = widgets.ToggleButton(
        value=False, description="loop", icon="repeat", tooltip="play it round and round"
    )
    loop.observe(lambda change: setattr(audio, "loop", bool(change["new"])), names="value")
    title = widgets.HTML(
        f"<b>{html.escape(out.path)}</b> {out.duration_s:g} s: {html.escape(out.prompt or '')}"
    )
    cell = widgets.VBox([title, widgets.HBox([audio, loop]), picture(samples, rate, out.prompt or "")])
    cell.player, cell.loop = audio, loop  # for tests and notebooks
    return cell


def takes_grid(art: Artifact, columns: int = 2) -> widgets.GridBox:
    """Every audio take of an artifact in a grid (``columns`` wide)."""
    cells = [take_cell(art, i) for i, out in enumerate(art.outputs) if out.media == "audio"]
    return widgets.GridBox(cells, layout=widgets.Layout(grid_template_columns=f"repeat({columns}, 1fr)"))


class SamplesView:
    """The samples widget. Display it in a notebook cell (``SamplesView()`` as the last line).

    Example:
        >>> view = SamplesView(model="tiny-stable-audio")  # doctest: +SKIP
        >>> view.prompt.value = "punchy kick"; view.type.value = "one-shot"; view.generate_button.click()  # doctest: +SKIP
        >>> view.wait(); view.grid.children  # doctest: +SKIP
    """

    def __init__(self, wb: Workbench | None = None, model: str | None = None):
        self.wb = wb or Workbench.open()
        self.defaults = kind_defaults(self.wb, "sample")  # the CLI's and the pipeline's defaults too
        d = self.defaults.request
        bound = limits(SampleRequest)
        self.last: Generated | None = None
        self._stop = threading.Event()
        self._last_tick = 0.0
        style = {"description_width": "90px"}

        # 1. The model: local snapshots of the stable-audio engine.
        specs = self.wb.specs("model")
        names = [
            r.name
            for r in list_snapshots(self.wb, "model")
            if r.present and getattr(specs.get(r.name), "engine", None) == ENGINE
        ]
        prefer = model or self.defaults.model
        self.model = widgets.Dropdown(
            options=names or [("no local stable-audio model: fetch or build one", None)],
            value=prefer if prefer in names else (names[0] if names else None),
            description="model", style=style,
        )  # fmt: skip

        # 2. What to make.
        self.prompt = widgets.Textarea(description="prompt", placeholder="e.g. tight funk drum loop, dry",
                                       style=style, layout=widgets.Layout(width="640px", height="50px"))  # fmt: skip
        self.type = widgets.ToggleButtons(
            options=list(SAMPLE_TYPES), value=d.get("type", "sfx"), description="type", style=style
        )
        self.bpm = widgets.BoundedFloatText(value=float(d.get("bpm") or 120.0), min=bound["bpm"].low, max=bound["bpm"].high,
                                            step=1.0, description="bpm", style=style)  # fmt: skip
        self.bars = widgets.BoundedIntText(value=int(d.get("bars") or 1), min=int(bound["bars"].low),
                                           max=int(bound["bars"].high), description="bars", style=style)  # fmt: skip
        self.duration = widgets.BoundedFloatText(value=float(d.get("duration_s") or 4.0), min=0.1,
                                                 max=bound["duration_s"].high, step=0.5, description="duration (s)",
                                                 style=style)  # fmt: skip
        self.takes = widgets.IntSlider(value=int(d.get("takes", 4)), min=int(bound["takes"].low),
                                       max=int(bound["takes"].high), description="takes", style=style)  # fmt: skip
        self.steps = widgets.BoundedIntText(value=int(d.get("steps", 100)), min=int(bound["steps"].low),
                                            max=int(bound["steps"].high), description="steps", style=style)  # fmt: skip
        self.seed = widgets.IntText(value=choose_seed(), description="seed", style=style)
        self.type.observe(lambda _: self._update_fields(), names="value")

        # 3. Actions, progress, the grid of takes.
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(
            description="Stop", button_style="warning", icon="stop", disabled=True
        )
        self.generate_button.on_click(lambda _: self.generate())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps", style=style)
        self.status = widgets.HTML()
        self.log = widgets.Output()
        self.grid = widgets.GridBox()
        self.summary = widgets.HTML()
        self._task = Task(self.status, self.log)
        self.loop_fields = widgets.HBox([self.bpm, self.bars])
        self.widget = widgets.VBox([
            widgets.HTML("<h3 style='margin:0'>Samples</h3>"), self.model, self.prompt, self.type,
            self.loop_fields, self.duration, widgets.HBox([self.takes, self.steps, self.seed]),
            widgets.HBox([self.generate_button, self.stop_button, self.progress]),
            self.status, self.grid, self.summary, self.log,
        ])  # fmt: skip
        self.widget.add_class("harmonia-samples")
        self._update_fields()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _update_fields(self) -> None:
        loop = self.type.value == "loop"
        self.loop_fields.layout.display = None if loop else "none"
        self.duration.layout.display = "none" if loop else None

    def build_request(self):
        """The model and request the fields describe (RequestError if there is no model)."""
        if not self.model.value:
            raise RequestError(
                "no stable-audio model here: build one (harmonia models tiny stable-audio) or fetch one."
            )
        loop = self.type.value == "loop"
        request = self.defaults.request_for(
            (self.prompt.value,), seed=int(self.seed.value), type=self.type.value, takes=int(self.takes.value),
            steps=int(self.steps.value), bpm=float(self.bpm.value) if loop else None,
            bars=int(self.bars.value) if loop else None, duration_s=None if loop else float(self.duration.value),
        )  # fmt: skip
        return self.model.value, request

    def generate(self) -> threading.Thread | None:
        """Start a generation in a worker thread (what the Generate button does)."""
        if self._task.running:
            return None
        self.status.value = ""
        try:
            model, request = self.build_request()
        except HarmoniaError as exc:
            self.status.value = status_html(str(exc), "error")
            return None
        self._stop.clear()
        self.progress.value, self.progress.max = 0, 1
        self.generate_button.disabled, self.stop_button.disabled = True, False
        settings = self.defaults.run_settings()

        def work() -> str:
            done = generate(self.wb, model, request, progress=self._on_step, cancel=self._stop, **settings)
            self.last = done
            self.grid.children = takes_grid(done.artifact).children
            self.grid.layout.grid_template_columns = "repeat(2, 1fr)"
            self.summary.value = summary_html(done.artifact)
            if done.cached:
                return f"Found artifact {done.artifact.id}: the identical request was made before."
            return f"Generated artifact {done.artifact.id} ({len(done.artifact.outputs)} takes) in {done.result.generate_s:.1f} s."

        def finished() -> None:
            self.generate_button.disabled, self.stop_button.disabled = False, True

        return self._task.start(work, finished)

    def _on_step(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last_tick >= PROGRESS_EVERY_S:
            self._last_tick = now
            self.progress.max, self.progress.value = total, done

    def wait(self, timeout: float | None = None) -> None:
        self._task.wait(timeout)

"""The samples view: a prompt, a type (one-shot, loop, sfx), a tempo and bars, takes; a grid of takes.

Each take in the grid has a player, its waveform and a loop toggle (so a loop can be heard
wrapping around its seam). Generation runs in a worker thread through the same
:func:`~harmonia.generation.generate` as ``harmonia generate sample``; Stop ends it at the
next denoising step and nothing is written.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from harmonia.artifacts import Artifact
from harmonia.engines.base import choose_seed
from harmonia.generation import Generated
from harmonia.requests import SAMPLE_TYPES, SampleRequest, limits
from harmonia.ui.views import GenerateView, picture, player, read_take, summary_html
from harmonia.workbench import Workbench


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


class SamplesView(GenerateView):
    """The samples widget. Display it in a notebook cell (``SamplesView()`` as the last line).

    Example:
        >>> view = SamplesView(model="tiny-stable-audio")  # doctest: +SKIP
        >>> view.prompt.value = "punchy kick"; view.type.value = "one-shot"; view.generate_button.click()  # doctest: +SKIP
        >>> view.wait(); view.grid.children  # doctest: +SKIP
    """

    kind, engine, title = "sample", "stable-audio", "Samples"

    def __init__(self, wb: Workbench | None = None, model: str | None = None):
        super().__init__(wb, model)  # model, Generate/Stop, progress, status, summary, log
        d = self.defaults.request
        bound = limits(SampleRequest)
        style = self.field_style

        # 1. What to make.
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

        # 2. The grid of takes.
        self.grid = widgets.GridBox()
        self.loop_fields = widgets.HBox([self.bpm, self.bars])
        self.assemble(
            [self.prompt, self.type, self.loop_fields, self.duration, widgets.HBox([self.takes, self.steps, self.seed])],
            [self.grid],
        )  # fmt: skip
        self._update_fields()

    def _update_fields(self) -> None:
        loop = self.type.value == "loop"
        self.loop_fields.layout.display = None if loop else "none"
        self.duration.layout.display = "none" if loop else None

    def build_request(self) -> tuple[str, SampleRequest]:
        """The model and request the fields describe (RequestError if there is no model)."""
        model = self.require_model()
        loop = self.type.value == "loop"
        request = self.defaults.request_for(
            (self.prompt.value,), seed=int(self.seed.value), type=self.type.value, takes=int(self.takes.value),
            steps=int(self.steps.value), bpm=float(self.bpm.value) if loop else None,
            bars=int(self.bars.value) if loop else None, duration_s=None if loop else float(self.duration.value),
        )  # fmt: skip
        return model, request

    def show(self, art: Artifact) -> None:
        """Every take of ``art`` in the grid, its summary below."""
        self.grid.children = takes_grid(art).children
        self.grid.layout.grid_template_columns = "repeat(2, 1fr)"
        self.summary.value = summary_html(art)

    def made(self, done: Generated) -> str:
        if done.cached:
            return super().made(done)
        return f"Generated artifact {done.artifact.id} ({len(done.artifact.outputs)} takes) in {done.result.generate_s:.1f} s."

"""The music studio: pick a model, shape an idea, generate, listen, look, read the manifest.

Generation runs in a worker thread; the progress bar advances per decoding step, Stop ends
the generation at the next step and nothing is written.
"""

from __future__ import annotations

import hashlib
import html
import json
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch

from harmonia.defaults import kind_defaults
from harmonia.engines.base import DTYPES, choose_seed, pick_device, pick_dtype
from harmonia.engines.musicgen import PRECISIONS
from harmonia.errors import HarmoniaError, RequestError
from harmonia.generation import From, Generated, generate
from harmonia.prompts import Idea, canonical_prompt
from harmonia.requests import MusicRequest, limits
from harmonia.snapshots import list_snapshots
from harmonia.ui.views import Task, artifact_view, status_html
from harmonia.workbench import Workbench

PROGRESS_EVERY_S = 0.05  # at most 20 progress messages a second, whatever the step rate


def _runs_on(dtype: str, device: torch.device) -> bool:
    """Whether the engines take ``dtype`` on ``device`` (pick_dtype's own rule: float16 needs a GPU)."""
    try:
        pick_dtype(dtype, device)
    except RequestError:
        return False
    return True


class Studio:
    """The studio widget. Display it in a notebook cell (``Studio()`` as the cell's last line).

    Args:
        wb: the workbench (default: found from the working directory).
        model: the model to select first (default: params.yaml's music.model, if present).

    Example:
        >>> studio = Studio(model="tiny-musicgen")  # doctest: +SKIP
        >>> studio.idea.value = "calm piano"; studio.generate_button.click(); studio.wait()  # doctest: +SKIP
        >>> studio.last.artifact.id  # doctest: +SKIP
    """

    def __init__(self, wb: Workbench | None = None, model: str | None = None):
        self.wb = wb or Workbench.open()
        self.defaults = kind_defaults(self.wb, "music")  # the CLI's and the pipeline's defaults too
        defaults = {
            **self.defaults.request,
            "model": self.defaults.model,
            "precision": self.defaults.runtime.precision,
        }
        bound = limits(MusicRequest)  # the engine's own limits: a slider never offers what it refuses
        self.last: Generated | None = None
        self._stop = threading.Event()
        self._last_tick = 0.0
        style = {"description_width": "90px"}

        # 1. The model picker: local snapshots with their verification state.
        self.model = widgets.Dropdown(description="model", style=style, layout=widgets.Layout(width="420px"))
        self.refresh_button = widgets.Button(
            icon="refresh", tooltip="refresh the model list", layout=widgets.Layout(width="40px")
        )
        self.refresh_button.on_click(lambda _: self.refresh_models())
        self.refresh_models(prefer=model or defaults.get("model"))

        # 2. The idea and its canonical prompt.
        self.idea = widgets.Textarea(description="idea", placeholder="what should it sound like?", style=style,
                                     layout=widgets.Layout(width="640px", height="60px"))  # fmt: skip
        self.genre = widgets.Text(description="genre", style=style)
        self.mood = widgets.Text(description="mood", style=style)
        self.tempo = widgets.Text(description="tempo (bpm)", placeholder="e.g. 90", style=style)
        self.key = widgets.Text(description="key", placeholder="e.g. A minor", style=style)
        self.instruments = widgets.Text(description="instruments", placeholder="piano, strings", style=style)
        self.prompt_preview = widgets.HTML()
        for field in (self.idea, self.genre, self.mood, self.tempo, self.key, self.instruments):
            field.observe(lambda _: self._update_preview(), names="value")
        # A language model may expand the idea into a prompt (a text artifact, the parent of the music).
        self.text_defaults = kind_defaults(self.wb, "text")
        self.writer = widgets.Dropdown(
            description="writer", style=style, layout=widgets.Layout(width="320px")
        )
        self.expand_button = widgets.Button(
            description="Expand with the LM",
            icon="pencil",
            tooltip="a language model writes a prompt from the idea",
            layout=widgets.Layout(width="190px"),
        )
        self.expand_button.on_click(lambda _: self.expand())
        self._written: tuple[str, str] | None = (
            None  # (text artifact id, its text) while the idea is that text
        )
        self.refresh_writers()

        # 3. Generation parameters.
        self.duration = widgets.BoundedFloatText(value=float(defaults.get("duration_s", 10.0)), min=0.1,
                                                 max=bound["duration_s"].high, step=bound["duration_s"].step,
                                                 description="duration (s)", style=style)  # fmt: skip
        self.seed = widgets.IntText(value=choose_seed(), description="seed", style=style)
        self.dice = widgets.Button(
            description="new seed", tooltip="draw a new random seed", layout=widgets.Layout(width="90px")
        )
        self.dice.on_click(lambda _: setattr(self.seed, "value", choose_seed()))
        # Slider ranges: the engine's limits (open ends one step in); very wide ones capped to a usable span.
        self.temperature = widgets.FloatSlider(value=float(defaults.get("temperature", 1.0)), min=bound["temperature"].step,
                                               max=min(bound["temperature"].high, 2.0), step=bound["temperature"].step,
                                               description="temperature", style=style)  # fmt: skip
        self.top_k = widgets.IntSlider(value=int(defaults.get("top_k", 250)), min=int(bound["top_k"].low),
                                       max=min(int(bound["top_k"].high), 2048), description="top-k", style=style)  # fmt: skip
        self.top_p = widgets.FloatSlider(value=float(defaults.get("top_p", 1.0)), min=bound["top_p"].step,
                                         max=bound["top_p"].high, step=bound["top_p"].step,
                                         description="top-p", style=style)  # fmt: skip
        self.precision = widgets.Dropdown(
            options=list(PRECISIONS),
            value=defaults.get("precision", "exact"),
            description="precision",
            style=style,
        )
        # The load's dtype: float16 only where generation runs on a GPU (the engine refuses it on the CPU).
        # int8 and int4 compute their decoder in float32 on a bfloat16 load; the text encoder and
        # EnCodec keep the dtype chosen here, and the manifest records it (an artifact of its own).
        # A device or dtype in params.yaml that cannot run here is offered as it is: Generate says why.
        chosen = self.defaults.runtime.dtype or "float32"
        try:
            device = pick_device(self.defaults.runtime.device)
        except HarmoniaError:  # a device that cannot run here (Generate says why): the CPU's dtypes
            device = torch.device("cpu")
        dtypes = [d for d in DTYPES if _runs_on(d, device)]
        self.dtype = widgets.Dropdown(
            options=dtypes if chosen in dtypes else [*dtypes, chosen],
            value=chosen,
            description="dtype",
            style=style,
        )
        self.guidance = widgets.FloatSlider(value=float(defaults.get("guidance_scale", 3.0)), min=bound["guidance_scale"].low,
                                            max=min(bound["guidance_scale"].high, 10.0), step=bound["guidance_scale"].step,
                                            description="guidance", style=style)  # fmt: skip

        # 4. Conditioning audio.
        self.melody = widgets.FileUpload(accept="audio/*", multiple=False, description="melody")
        self.continuation = widgets.FileUpload(accept="audio/*", multiple=False, description="continue from")
        self.model.observe(lambda _: self._update_melody_visibility(), names="value")

        # 5. Actions, progress, status, result.
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(
            description="Stop", button_style="warning", icon="stop", disabled=True
        )
        self.generate_button.on_click(lambda _: self.generate())
        self.stop_button.on_click(lambda _: self.stop())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="steps", style=style)
        self.progress_label = widgets.Label()
        self.status = widgets.HTML()
        self.log = widgets.Output()
        self.result = widgets.VBox()
        self._task = Task(self.status, self.log)

        self.widget = widgets.VBox(
            [
                widgets.HTML("<h3 style='margin:0'>Harmonia studio</h3>"),
                widgets.HBox([self.model, self.refresh_button]),
                self.idea,
                widgets.HBox([self.writer, self.expand_button]),
                widgets.HBox([self.genre, self.mood, self.tempo]),
                widgets.HBox([self.key, self.instruments]),
                self.prompt_preview,
                widgets.HBox([self.duration, self.seed, self.dice]),
                widgets.HBox([self.temperature, self.top_k]),
                widgets.HBox([self.top_p, self.guidance]),
                widgets.HBox([self.precision, self.dtype]),
                widgets.HBox([self.melody, self.continuation]),
                widgets.HBox([self.generate_button, self.stop_button, self.progress, self.progress_label]),
                self.status,
                self.result,
                self.log,
            ],
            layout=widgets.Layout(padding="4px"),
        )
        self.widget.add_class("harmonia-studio")
        self._update_preview()
        self._update_melody_visibility()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- the parts -------------------------------------------------------------------------
    def refresh_models(self, prefer: str | None = None) -> None:
        """List local music models with their verification state; keep or pick the selection."""
        music = {name for name, spec in self.wb.specs("model").items() if _kind_of(spec) == "music"}
        rows = [r for r in list_snapshots(self.wb, "model") if r.present and r.name in music]
        options = [(f"{r.name}  ({r.verified})", r.name) for r in rows]
        keep = prefer if prefer in {r.name for r in rows} else self.model.value
        self.model.options = options or [("no local models: fetch or build one (see Models)", None)]
        self.model.value = keep if keep in {r.name for r in rows} else (options[0][1] if options else None)

    def refresh_writers(self) -> None:
        """The language models that can expand an idea: present text snapshots and servers."""
        specs = self.wb.specs("model")
        rows = [
            r
            for r in list_snapshots(self.wb, "model")
            if r.name in specs and _kind_of(specs[r.name]) == "text"
        ]
        local = [r.name for r in rows if r.present]  # models on disk first, then servers (which may be down)
        names = local + [r.name for r in rows if not r.present and r.source.startswith("endpoint")]
        prefer = self.text_defaults.model
        self.writer.options = names or [("no language model: build tiny-lm or fetch one", None)]
        self.writer.value = prefer if prefer in names else (names[0] if names else None)
        self.expand_button.disabled = not names

    def expand(self) -> threading.Thread | None:
        """A language model writes a prompt from the idea, in a worker thread; the text replaces the
        idea, editable, and while it is left as written the music names the text artifact as its parent."""
        if self._task.running:
            return None
        try:
            if not self.writer.value:
                raise RequestError(
                    "no language model: build one (harmonia models tiny lm) or fetch one, then refresh."
                )
            if not self.idea.value.strip():
                raise RequestError("idea is empty: write a few words for the language model to expand.")
            request = self.text_defaults.request_for(
                self.idea.value, seed=int(self.seed.value), task="prompt"
            )
        except HarmoniaError as exc:
            self.status.value = status_html(str(exc), "error")
            return None
        self._stop.clear()
        self.generate_button.disabled = self.expand_button.disabled = True
        self.stop_button.disabled = False
        model, settings = self.writer.value, self.text_defaults.run_settings()

        def work() -> str:
            done = generate(self.wb, model, request, progress=self._on_step, cancel=self._stop, **settings)
            text = done.artifact.file(done.artifact.outputs[0]).read_text(encoding="utf-8").strip()
            self.idea.value = text
            self._written = (done.artifact.id, text)
            return f"{model} wrote the prompt (artifact {done.artifact.id}); edit it, or generate with it as it is."

        def finished() -> None:
            self.generate_button.disabled, self.stop_button.disabled = False, True
            self.expand_button.disabled = not self.writer.value

        return self._task.start(work, finished)

    def _idea(self) -> Idea:
        tempo = self.tempo.value.strip()
        try:
            tempo_bpm = float(tempo) if tempo else None
        except ValueError:
            raise RequestError(
                f"tempo must be a number of beats per minute (e.g. 90), got {tempo!r}."
            ) from None
        instruments = tuple(i.strip() for i in self.instruments.value.split(",") if i.strip())
        return Idea(self.idea.value, genre=self.genre.value or None, mood=self.mood.value or None,
                    tempo_bpm=tempo_bpm, key=self.key.value or None, instruments=instruments)  # fmt: skip

    def _update_preview(self) -> None:
        try:
            prompt = canonical_prompt(self._idea())
            self.prompt_preview.value = (
                f"<div style='margin-left:94px'>prompt: <code>{html.escape(prompt)}</code></div>"
            )
        except HarmoniaError as exc:
            self.prompt_preview.value = (
                f"<div style='margin-left:94px;color:#777'>prompt: {html.escape(str(exc))}</div>"
            )

    def _update_melody_visibility(self) -> None:
        takes_melody = False
        if self.model.value:
            config = self.wb.snapshot_dir("model", self.model.value) / "config.json"
            try:
                takes_melody = json.loads(config.read_text()).get("model_type") == "musicgen_melody"
            except (OSError, ValueError):
                pass
        self.melody.layout.display = None if takes_melody else "none"
        if not takes_melody:
            self.melody.value = ()

    def _upload(self, upload: widgets.FileUpload, what: str) -> str | None:
        """Save an uploaded file under .harmonia/uploads/ (named by its sha256) and return its path."""
        if not upload.value:
            return None
        item = upload.value[0]
        data = bytes(item["content"])
        suffix = Path(item["name"]).suffix.lower() or ".wav"
        folder = self.wb.state_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{what}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
        path.write_bytes(data)
        return str(path)

    def build_request(self) -> tuple[str, MusicRequest, list[Idea] | None]:
        """The model, request and idea the current field values describe (RequestError if they are off)."""
        if not self.model.value:
            raise RequestError("no model selected: fetch a model or build a tiny one, then refresh the list.")
        idea = self._idea()
        prompts: Any = (canonical_prompt(idea),)
        written = self._written is not None and prompts == (self._written[1],)
        if written:  # the language model's words, untouched: the text artifact is the parent
            prompts = From(self._written[0])
        request = self.defaults.request_for(
            prompts,
            seed=int(self.seed.value),
            duration_s=float(self.duration.value),
            temperature=float(self.temperature.value),
            top_k=int(self.top_k.value),
            top_p=float(self.top_p.value),
            guidance_scale=float(self.guidance.value),
            melody=self._upload(self.melody, "melody"),
            continuation=self._upload(self.continuation, "continuation"),
        )
        return self.model.value, request, None if written else [idea]

    # -- actions ---------------------------------------------------------------------------
    def generate(self) -> threading.Thread | None:
        """Start a generation in a worker thread (what the Generate button does)."""
        if self._task.running:
            return None
        self.status.value = ""
        try:
            model, request, ideas = self.build_request()
        except HarmoniaError as exc:
            self.status.value = status_html(str(exc), "error")
            return None
        self._stop.clear()
        self.progress.value, self.progress.max = 0, 1
        self.progress_label.value = "loading…"
        self.generate_button.disabled, self.stop_button.disabled = True, False

        settings = {
            **self.defaults.run_settings(),
            "precision": self.precision.value,
            "dtype": self.dtype.value,
        }

        def work() -> str:
            done = generate(
                self.wb, model, request, ideas=ideas, progress=self._on_step, cancel=self._stop, **settings
            )
            self.last = done
            self.result.children = [artifact_view(done.artifact)]
            self.progress.value = self.progress.max
            if done.cached:
                return f"Found artifact {done.artifact.id}: the identical request was made before."
            return f"Generated artifact {done.artifact.id} in {done.result.generate_s:.1f} s."

        def finished() -> None:
            self.generate_button.disabled, self.stop_button.disabled = False, True

        return self._task.start(work, finished)

    def _on_step(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last_tick >= PROGRESS_EVERY_S:
            self._last_tick = now
            self.progress.max = total
            self.progress.value = done
            self.progress_label.value = f"{done}/{total}"

    def stop(self) -> None:
        """End the running generation at its next decoding step (what the Stop button does)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running generation (if any) has finished."""
        self._task.wait(timeout)


def _kind_of(spec) -> str | None:
    """The kind of artifact a model's engine makes (None when its engine is unknown or not a generator)."""
    from harmonia.engines import ENGINES, engine_class

    return engine_class(spec.engine).kind if spec.engine in ENGINES else None

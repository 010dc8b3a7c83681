"""Widgets that show artifacts (a player, the waveform/spectrogram picture, a summary, A/B, facts),
and the shell the generating views share (:class:`GenerateView`: model, Generate/Stop, progress,
status, the worker thread).

Players get an MP3 rendering of the take (about 160 kbit/s), so even minutes of audio stay far
below JupyterLab's message limit; the artifact's own files stay lossless on disk.
"""

from __future__ import annotations

import html
import io
import json
import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import soundfile as sf

from harmonia.artifacts import Artifact
from harmonia.audio import facts, mp3_bytes, spectral_centroid_hz
from harmonia.defaults import kind_defaults
from harmonia.errors import Cancelled, HarmoniaError, RequestError
from harmonia.generation import Generated, generate
from harmonia.plots import audio_figure
from harmonia.snapshots import list_snapshots
from harmonia.workbench import Workbench

PROGRESS_EVERY_S = 0.05  # the progress bar is redrawn at most this often (and at the last step)


def read_take(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate


def player(path: Path) -> widgets.Audio:
    """An audio player for a file (autoplay and loop off)."""
    samples, rate = read_take(path)
    return widgets.Audio(
        value=mp3_bytes(samples, rate), format="mp3", autoplay=False, loop=False, controls=True
    )


def picture(samples: np.ndarray, rate: int, title: str = "") -> widgets.Image:
    """Waveform and spectrogram as a PNG image widget."""
    buffer = io.BytesIO()
    audio_figure(samples, rate, title).savefig(buffer, format="png")
    return widgets.Image(value=buffer.getvalue(), format="png", layout=widgets.Layout(max_width="100%"))


def licence_html(art: Artifact) -> str:
    """A plain warning when any model behind the artifact is for non-commercial use only."""
    m = art.manifest
    if not m.non_commercial:
        if m.licence_unknown:
            return (
                "<div class='harmonia-licence' style='color:#8a5a00'>Licence not recorded for "
                f"{html.escape(', '.join(m.licence_unknown))}: check it before any commercial use.</div>"
            )
        return ""
    names = ", ".join(sorted({f"{x.model} ({x.license})" for x in m.licenses if x.non_commercial}))
    return (
        "<div class='harmonia-licence' style='color:#b71c1c;font-weight:bold'>"
        f"Non-commercial use only: made with {html.escape(names)}.</div>"
    )


def summary_html(art: Artifact) -> str:
    m = art.manifest
    model, t, rt = m.model, m.timings, m.runtime
    revision = (model.revision or "")[:12] or f"synthetic seed {model.seed}"
    rows = [
        ("artifact", f"{art.id} ({m.kind})"),
        ("seed", str(art.seed)),
        ("model", f"{model.name} @ {revision}" if model.source != "none" else f"none ({model.name})"),
        ("licence", ", ".join(sorted({str(x.license or "not recorded") for x in m.licenses}))),
        ("runtime", f"{rt.device} {rt.dtype} ({rt.precision}), {rt.threads} threads"),
        ("timings", f"load {t.load_s:.2f} s, generate {t.generate_s:.2f} s"),
    ]
    if t.real_time_factor is not None:
        rows.append(("real-time factor", f"{t.real_time_factor:.2f}"))
    rows += [("parent", f"{p.id} ({p.role})") for p in m.parents]
    rows.append(("path", str(art.path)))
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return licence_html(art) + f"<table class='harmonia-summary'>{cells}</table>"


def artifact_view(art: Artifact, takes: int | None = None) -> widgets.VBox:
    """Player, picture and prompt for each take, then the manifest summary."""
    items = []
    for out in art.outputs[:takes]:
        items.append(widgets.HTML(f"<b>{html.escape(out.path)}</b>: {html.escape(out.prompt or '')}"))
        if out.media == "audio":
            samples, rate = read_take(art.file(out))
            items += [player(art.file(out)), picture(samples, rate, out.prompt or "")]
        elif out.media == "video" and out.preview:  # the poster frame; the player comes with the video view
            data = (art.path / out.preview).read_bytes()
            items.append(widgets.Image(value=data, format="png", layout=widgets.Layout(max_width="100%")))
        elif out.media == "text":
            text = art.file(out).read_text(encoding="utf-8")
            items.append(widgets.HTML(f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>"))
    items.append(widgets.HTML(summary_html(art)))
    return widgets.VBox(items, layout=widgets.Layout(border="1px solid #ddd", padding="6px"))


def manifest_html(art: Artifact) -> str:
    text = json.dumps(art.manifest.to_json(), indent=2, ensure_ascii=False)
    return f"<pre style='max-height:24em;overflow:auto;font-size:11px'>{html.escape(text)}</pre>"


def parameter_diff(a: Artifact, b: Artifact) -> list[tuple[str, str, str]]:
    """(parameter, A, B) for every request field, model and setting that differs."""

    def flat(art: Artifact) -> dict[str, str]:
        m = art.manifest
        values = {f"request.{k}": json.dumps(v, ensure_ascii=False) for k, v in m.request.items()}
        values["kind"] = m.kind
        values["model"] = f"{m.model.name} @ {m.model.inventory_digest[:12]}"
        values["engine"] = f"{m.engine.name} v{m.engine.code_version}"
        values.update({f"output.{k}": json.dumps(v) for k, v in asdict(m.output).items()})
        values.update(
            {f"runtime.{k}": str(getattr(m.runtime, k)) for k in ("device", "dtype", "threads", "precision")}
        )
        values["parents"] = ", ".join(f"{p.id} ({p.role})" for p in m.parents) or "-"
        return values

    fa, fb = flat(a), flat(b)
    return [(k, fa.get(k, "-"), fb.get(k, "-")) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def ab_view(a: Artifact, b: Artifact) -> widgets.VBox:
    """Two artifacts side by side (first take of each) and the parameters that differ."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(x)}</td><td>{html.escape(y)}</td></tr>"
        for k, x, y in parameter_diff(a, b)
    )
    diff = widgets.HTML(
        "<table class='harmonia-diff'><tr><th>parameter</th><th>A</th><th>B</th></tr>"
        + (rows or "<tr><td colspan=3>no differences</td></tr>")
        + "</table>"
    )
    columns = [
        widgets.VBox([widgets.HTML(f"<b>{side}</b>"), artifact_view(art, takes=1)])
        for side, art in (("A", a), ("B", b))
    ]
    return widgets.VBox([widgets.HBox(columns), diff])


def facts_rows(arts: list[Artifact]) -> list[dict]:
    """Signal facts of every take: the manifest's plus the spectral centroid."""
    rows = []
    for art in arts:
        r = art.manifest.request
        for out in art.audio_outputs():
            samples, rate = read_take(art.file(out))
            f = facts(samples, rate)
            centroid = spectral_centroid_hz(samples, rate)
            rows.append(
                {
                    "artifact": art.id,
                    "prompt": out.prompt,
                    "seed": art.seed,
                    "guidance": r.get("guidance_scale"),
                    "duration_s": f["duration_s"],
                    "peak_dbfs": f["peak_dbfs"],
                    "loudness_lufs": f["loudness_lufs"],
                    "centroid_hz": round(centroid, 1) if centroid is not None else None,
                }
            )
    return rows


def facts_table(arts: list[Artifact]) -> widgets.HTML:
    rows = facts_rows(arts)
    if not rows:
        return widgets.HTML("<i>no artifacts</i>")
    head = "".join(f"<th>{k}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return widgets.HTML(f"<table class='harmonia-facts'><tr>{head}</tr>{body}</table>")


def status_html(message: str, kind: str = "info") -> str:
    colour = {"info": "#333", "ok": "#1b5e20", "error": "#b71c1c"}[kind]
    return f"<div class='harmonia-status harmonia-{kind}' style='color:{colour}'>{html.escape(message)}</div>"


class Task:
    """Runs one piece of long work in a thread and reports its outcome in a status widget.

    Errors Harmonia raises on purpose are shown as their one-line message; anything else is
    shown as one line too, with the traceback kept in ``log`` (an Output appended to, never
    entered from the thread).
    """

    def __init__(self, status: widgets.HTML, log: widgets.Output):
        self.status, self.log = status, log
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(
        self, work: Callable[[], str | tuple[str, str] | None], done: Callable[[], None] = lambda: None
    ) -> threading.Thread:
        """Run ``work`` in a thread: it returns a message (shown as ok) or (message, "ok" | "error")."""

        def run() -> None:
            try:
                outcome = work()
                if outcome:
                    message, kind = (outcome, "ok") if isinstance(outcome, str) else outcome
                    self.status.value = status_html(message, kind)
            except Cancelled as exc:
                self.status.value = status_html(str(exc), "info")
            except HarmoniaError as exc:
                self.status.value = status_html(str(exc), "error")
            except Exception as exc:  # a bug, not bad input: keep the traceback for the curious
                self.status.value = status_html(
                    f"Unexpected error: {type(exc).__name__}: {exc} (details below)", "error"
                )
                self.log.append_stderr(traceback.format_exc())
            finally:
                done()

        self.thread = threading.Thread(target=run, name="harmonia-ui", daemon=True)
        self.thread.start()
        return self.thread

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


def engine_kind(spec) -> str | None:
    """The kind of artifact a model's engine makes (None when its engine is unknown)."""
    from harmonia.engines import ENGINES, engine_class

    engine = getattr(spec, "engine", None)
    return engine_class(engine).kind if engine in ENGINES else None


def local_models(wb: Workbench, engine: str, kind: str | None = None) -> list[str]:
    """The names of the models in params.yaml that have a local snapshot and that ``engine`` runs,
    or, given ``kind``, whose engine makes that kind (stable-audio and audiogen both make samples)."""
    specs = wb.specs("model")
    present = [r.name for r in list_snapshots(wb, "model") if r.present and r.name in specs]
    if kind is not None:
        return [name for name in present if engine_kind(specs[name]) == kind]
    return [name for name in present if getattr(specs[name], "engine", None) == engine]


def model_dropdown(
    wb: Workbench,
    engine: str,
    prefer: str | None,
    description: str = "model",
    style: dict | None = None,
    kind: str | None = None,
) -> widgets.Dropdown:
    """A choice of the local models of ``engine`` (given ``kind``: of every engine making that kind;
    ``prefer`` selected when it is one), or a hint saying how to get one (its value None)."""
    names = local_models(wb, engine, kind)
    hint = f"no local {engine} model: fetch or build one (harmonia models tiny {engine})"
    # index, not value: a value of None would select nothing, and the hint would not show
    return widgets.Dropdown(
        options=names or [(hint, None)],
        index=names.index(prefer) if prefer in names else 0,
        description=description,
        style=style or {"description_width": "90px"},
        layout=widgets.Layout(width="640px"),
    )


class GenerateView:
    """The shell of a generating view (samples, song, video): the one face they share.

    It owns the workbench and the kind's defaults (those of the CLI and the pipeline), the
    model list (local snapshots of every engine making ``kind``), Generate and Stop, the progress bar, the status
    line, the summary and the log, and the worker thread (one :class:`Task` at a time). A
    subclass sets ``kind``, ``engine`` and ``title``, builds its own fields, and defines
    ``build_request()`` (the model and request its fields describe) and ``show(artifact)`` (put
    a new artifact on show); then calls :meth:`assemble`. Generate runs the same
    :func:`~harmonia.generation.generate` as ``harmonia generate KIND``; Stop ends the work at
    its next step and nothing is written.

    Example:
        >>> view = SamplesView(model="tiny-stable-audio")  # doctest: +SKIP
        >>> view.generate_button.click(); view.wait(); view.status.value  # doctest: +SKIP
        "<div class='harmonia-status harmonia-ok' ...>Generated artifact 5f0c8a4b2d1e9f37 ...</div>"
    """

    kind: str = ""  # whose params.yaml section and request type the view uses
    engine: str = (
        ""  # the engine the "no model" hint suggests building (the list offers every engine of ``kind``)
    )
    title: str = ""  # the heading
    made_verb: str = "Generated"  # the status line's verb after new work

    def __init__(self, wb: Workbench | None = None, model: str | None = None):
        self.wb = wb or Workbench.open()
        self.defaults = kind_defaults(self.wb, self.kind)
        self.last: Generated | None = None  # the latest generation or edit
        self.field_style = {"description_width": "90px"}
        self._stop = threading.Event()
        self._last_tick = 0.0

        # 1. The model: local snapshots of the kind's engines, the one asked for (or the default) first.
        self.model = model_dropdown(
            self.wb, self.engine, model or self.defaults.model, style=self.field_style, kind=self.kind
        )

        # 2. Actions, progress, status, summary, log; the buttons work disables.
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(
            description="Stop", button_style="warning", icon="stop", disabled=True
        )
        self.generate_button.on_click(lambda _: self.generate())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, description="steps", style=self.field_style
        )
        self.actions = widgets.HBox([self.generate_button, self.stop_button, self.progress])
        self.status = widgets.HTML()
        self.summary = widgets.HTML()
        self.log = widgets.Output()
        self.busy_buttons: tuple[widgets.Button, ...] = (self.generate_button,)
        self._task = Task(self.status, self.log)

    def assemble(self, fields: Sequence[widgets.Widget], results: Sequence[widgets.Widget]) -> None:
        """The view's widget (CSS class harmonia-<title>): heading, model, ``fields``, actions, status, ``results``, summary, log."""
        self.widget = widgets.VBox([
            widgets.HTML(f"<h3 style='margin:0'>{html.escape(self.title)}</h3>"), self.model, *fields,
            self.actions, self.status, *results, self.summary, self.log,
        ])  # fmt: skip
        self.widget.add_class(f"harmonia-{self.title.lower()}")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    @property
    def status_text(self) -> str:
        """The status line as plain text (for notebooks and logs)."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value))

    # -- what a subclass defines ---------------------------------------------------------
    def build_request(self) -> tuple[str, object]:
        """The model and request the fields describe (RequestError if they describe none)."""
        raise NotImplementedError

    def show(self, art: Artifact) -> None:
        """Put a new artifact on show."""
        raise NotImplementedError

    def require_model(self) -> str:
        """The chosen model, or a RequestError saying how to get one."""
        if not self.model.value:
            raise RequestError(
                f"no {self.engine} model here: build one (harmonia models tiny {self.engine}) or fetch one."
            )
        return self.model.value

    # -- running work --------------------------------------------------------------------
    def generate(self) -> threading.Thread | None:
        """Start a generation in the worker thread (what the Generate button does)."""
        if self._task.running:
            return None
        try:
            model, request = self.build_request()
        except HarmoniaError as exc:
            self.status.value = status_html(str(exc), "error")
            return None
        settings = self.defaults.run_settings()
        return self.run(lambda: generate(self.wb, model, request, progress=self._on_step, cancel=self._stop,
                                         notice=self._notice, **settings))  # fmt: skip

    def run(self, make: Callable[[], Generated]) -> threading.Thread | None:
        """Run ``make`` (a generation or an edit) in the worker thread, then show its artifact."""

        def work() -> str:
            done = make()
            self.last = done
            self.show(done.artifact)
            return self.made(done)

        return self.start(work)

    def made(self, done: Generated) -> str:
        """The status line after ``done``."""
        if done.cached:
            return f"Found artifact {done.artifact.id}: the identical request was made before."
        return f"{self.made_verb} artifact {done.artifact.id} in {done.result.generate_s:.1f} s."

    def start(self, work: Callable[[], str | tuple[str, str] | None]) -> threading.Thread | None:
        """Run ``work`` in the worker thread with the buttons disabled and Stop enabled (None if busy)."""
        if self._task.running:
            return None
        self.status.value = ""
        self._stop.clear()
        self.progress.value, self.progress.max = 0, 1
        for button in self.busy_buttons:
            button.disabled = True
        self.stop_button.disabled = False

        def finished() -> None:
            self.stop_button.disabled = True
            self.enable_buttons()

        return self._task.start(work, finished)

    def enable_buttons(self) -> None:
        """Re-enable the buttons after work (a subclass enables those with something to act on)."""
        for button in self.busy_buttons:
            button.disabled = False

    def _notice(self, line: str) -> None:
        self.status.value = status_html(line, "info")

    def _on_step(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last_tick >= PROGRESS_EVERY_S:
            self._last_tick = now
            self.progress.max, self.progress.value = total, done

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the worker thread (for tests and notebooks)."""
        self._task.wait(timeout)

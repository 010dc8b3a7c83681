"""The song view: lyrics with section tags (lines and syllables per section against the duration),
style, tempo, key; a take with a range to repaint; its stems as players; its transcript beside
the lyrics with the words that were not understood marked.

Every action runs in a worker thread through the same functions as the CLI:
:func:`~harmonia.generation.generate` (``harmonia generate song``), :func:`harmonia.songs.edit`
(``harmonia edit repaint``), :func:`harmonia.songs.stems` and :func:`harmonia.songs.transcribe`.
Stop ends a generation at its next step and nothing is written.
"""

from __future__ import annotations

import html
import math
import threading

import ipywidgets as widgets

from harmonia.artifacts import Artifact
from harmonia.engines.base import choose_seed
from harmonia.errors import HarmoniaError
from harmonia.lyrics import LANGUAGES, SYLLABLES_PER_S, parse_lyrics
from harmonia.requests import SongRequest, limits
from harmonia.ui.views import (
    GenerateView,
    model_dropdown,
    picture,
    player,
    read_take,
    status_html,
    summary_html,
)
from harmonia.workbench import Workbench

MARKS = {  # how a word of the lyrics shows beside the transcript
    "equal": "",
    "substitute": "background:#fde68a",
    "delete": "background:#fecaca;text-decoration:line-through",
    "insert": "background:#bfdbfe",
}


def counts_html(lyrics: str, duration_s: float) -> str:
    """Lines and syllables per section, and the seconds they need against the duration (or the error)."""
    try:
        parsed = parse_lyrics(lyrics)
    except HarmoniaError as exc:
        return status_html(str(exc), "error")
    rows = "".join(
        f"<tr><td>[{html.escape(s.tag) or '-'}]</td><td>{len(s.lines)}</td><td>{s.syllables}</td></tr>"
        for s in parsed.sections
    )
    fits = parsed.needed_s <= duration_s
    verdict = (
        "an instrumental" if parsed.instrumental else
        f"{parsed.syllables} syllables need about {math.ceil(parsed.needed_s)} s of the {duration_s:g} s "
        f"({SYLLABLES_PER_S:g} a second)" + ("" if fits else ": too long, lengthen the song or cut lines")
    )  # fmt: skip
    colour = "#15803d" if fits else "#b91c1c"
    return (
        "<table class='harmonia-counts'><tr><th>section</th><th>lines</th><th>syllables</th></tr>"
        f"{rows}</table><div style='color:{colour}'>{html.escape(verdict)}</div>"
    )


def transcript_html(scores: dict | None, transcript: str) -> str:
    """The lyrics' words as the transcript aligned them: misheard words marked, WER and CER above."""
    if scores is None:
        return f"<div>{html.escape(transcript)}</div><div>(no lyrics to compare with)</div>"
    if scores["wer"] is None:
        return f"<div>{html.escape(transcript)}</div><div>(an instrumental: no words to compare)</div>"
    spans = []
    for op, ref, hyp in scores["words"]:
        style = MARKS.get(op, "")
        if op == "equal":
            spans.append(html.escape(ref))
        elif op == "insert":
            spans.append(
                f"<span class='harmonia-insert' style='{style}' title='heard, not sung'>{html.escape(hyp)}</span>"
            )
        else:
            heard = f"heard: {hyp}" if hyp else "not heard"
            spans.append(
                f"<span class='harmonia-{op}' style='{style}' title='{html.escape(heard)}'>{html.escape(ref)}</span>"
            )
    legend = " ".join(
        f"<span style='{MARKS[op]}'>{name}</span>"
        for op, name in (("substitute", "misheard"), ("delete", "not heard"), ("insert", "heard, not sung"))
    )
    return (
        f"<div><b>Transcript</b> of the vocals against the lyrics: {legend}</div>"
        f"<div><b>WER</b> {scores['wer']:.3f} &nbsp; <b>CER</b> {scores['cer']:.3f}</div>"
        f"<div class='harmonia-transcript'>{' '.join(spans)}</div>"
        f"<div style='color:#555;overflow-wrap:anywhere'>heard: {html.escape(transcript)}</div>"
    )


def take_title(art: Artifact) -> str:
    """The take's heading: its id and length, and for an edit what it edits ("repaint of ID, 0.5-1 s")."""
    out, request = art.outputs[0], art.manifest.request
    title = f"<b>{html.escape(art.id)}</b> {out.duration_s:g} s"
    task = request.get("task")
    source = next((p for p in art.manifest.parents if p.role == "source"), None)
    if task in ("repaint", "extend", "cover") and source is not None:
        title += f", {task} of {html.escape(source.id)}"
        if task == "repaint":
            title += f" ({request['start_s']:g}-{request['end_s']:g} s)"
    return title


class SongView(GenerateView):
    """The song widget. Display it in a notebook cell (``SongView()`` as the last line).

    Example:
        >>> view = SongView(model="tiny-ace-step")  # doctest: +SKIP
        >>> view.style.value = "dreamy synth pop"; view.lyrics.value = "[verse]\\nhello"  # doctest: +SKIP
        >>> view.generate_button.click(); view.wait()  # doctest: +SKIP
    """

    kind, engine, title, made_verb = "song", "ace-step", "Song", "Made"

    def __init__(
        self,
        wb: Workbench | None = None,
        model: str | None = None,
        stems_model: str | None = None,
        transcribe_model: str | None = None,
    ):
        super().__init__(wb, model)  # model, Generate/Stop, progress, status, summary, log
        d = self.defaults.request
        bound = limits(SongRequest)
        self.song: Artifact | None = None  # the take on show (a song, or an edit of one)
        self.stems_artifact: Artifact | None = None
        self.transcript_artifact: Artifact | None = None
        style = self.field_style

        # 1. What to make: style, lyrics (with counts per section), length, tempo, key, language.
        self.style = widgets.Text(description="style", placeholder="e.g. dreamy synth pop, female vocals",
                                  style=style, layout=widgets.Layout(width="640px"))  # fmt: skip
        self.lyrics = widgets.Textarea(
            description="lyrics", placeholder="[verse]\nfirst line\n[chorus]\n...", style=style,
            layout=widgets.Layout(width="420px", height="220px"),
        )  # fmt: skip
        self.counts = widgets.HTML()
        self.duration = widgets.BoundedFloatText(value=float(d.get("duration_s", 30.0)), min=1.0,
                                                 max=bound["duration_s"].high, step=1.0, description="duration (s)",
                                                 style=style)  # fmt: skip
        self.bpm = widgets.BoundedIntText(value=int(d.get("bpm") or 0), min=0, max=int(bound["bpm"].high),
                                          description="bpm (0: any)", style=style)  # fmt: skip
        self.key = widgets.Text(
            value=d.get("key") or "", description="key", placeholder="e.g. A minor", style=style
        )
        self.language = widgets.Dropdown(options=list(LANGUAGES), value=d.get("language", "en"),
                                         description="language", style=style)  # fmt: skip
        self.steps = widgets.BoundedIntText(value=int(d.get("steps", 8)), min=int(bound["steps"].low),
                                            max=int(bound["steps"].high), description="steps", style=style)  # fmt: skip
        self.seed = widgets.IntText(value=choose_seed(), description="seed", style=style)
        for field in (self.lyrics, self.duration):
            field.observe(lambda _: self._update_counts(), names="value")

        # 2. Actions on the take: repaint a range, stems, transcribe (Generate and Stop come with the shell),
        #    with the stems and transcription models (params.yaml's songs.stems_model/transcribe_model first).
        songs = self.wb.params.get("songs") if isinstance(self.wb.params.get("songs"), dict) else {}
        self.stems_model = model_dropdown(self.wb, "demucs", stems_model or songs.get("stems_model"),
                                          "stems model", style)  # fmt: skip
        self.transcribe_model = model_dropdown(self.wb, "whisper", transcribe_model or songs.get("transcribe_model"),
                                               "transcriber", style)  # fmt: skip
        for choice in (self.stems_model, self.transcribe_model):
            choice.layout.width = "420px"
        self.range = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.1, description="range (s)",
                                              style=style, disabled=True, layout=widgets.Layout(width="520px"))  # fmt: skip
        self.repaint_button = widgets.Button(description="Repaint range", icon="paint-brush", disabled=True)
        self.stems_button = widgets.Button(description="Stems", icon="columns", disabled=True)
        self.transcribe_button = widgets.Button(description="Transcribe", icon="comment", disabled=True)
        self.repaint_button.on_click(lambda _: self.repaint())
        self.stems_button.on_click(lambda _: self.split())
        self.transcribe_button.on_click(lambda _: self.transcribe())
        self.busy_buttons = (
            self.generate_button,
            self.repaint_button,
            self.stems_button,
            self.transcribe_button,
        )

        # 3. The take, its stems, the transcript beside the lyrics.
        self.take = widgets.VBox()
        self.stems = widgets.VBox()
        self.transcript = widgets.HTML()
        beside = widgets.Layout(flex="1 1 0%", min_width="0", padding="0 0 0 12px")  # wraps, never overflows
        self.assemble(
            [self.style, widgets.HBox([self.lyrics, widgets.VBox([self.counts, self.transcript], layout=beside)]),
             widgets.HBox([self.duration, self.bpm, self.key]), widgets.HBox([self.language, self.steps, self.seed])],
            [self.take, widgets.HBox([self.range, self.repaint_button]),
             widgets.HBox([self.stems_model, self.stems_button]),
             widgets.HBox([self.transcribe_model, self.transcribe_button]), self.stems],
        )  # fmt: skip
        self._update_counts()

    def _update_counts(self) -> None:
        self.counts.value = counts_html(self.lyrics.value, float(self.duration.value))

    # -- the request ---------------------------------------------------------------------
    def build_request(self) -> tuple[str, SongRequest]:
        """The model and request the fields describe (RequestError if there is no model)."""
        model = self.require_model()
        request = self.defaults.request_for(
            (self.style.value,), seed=int(self.seed.value), lyrics=self.lyrics.value,
            duration_s=float(self.duration.value), bpm=int(self.bpm.value) or None,
            key=self.key.value.strip() or None, language=self.language.value, steps=int(self.steps.value),
        )  # fmt: skip
        return model, request

    # -- actions on the take (each in the worker thread; Generate is the shell's) -------
    def repaint(self) -> threading.Thread | None:
        """Regenerate the selected range of the take on show (a new artifact, its child)."""
        from harmonia.songs import edit

        if self.song is None:
            return None
        start, end = self.range.value
        seed = int(self.seed.value)
        return self.run(lambda: edit(self.wb, "repaint", self.song.id, start_s=float(start), end_s=float(end),
                                     seed=seed, progress=self._on_step, cancel=self._stop))  # fmt: skip

    def split(self) -> threading.Thread | None:
        """The take's stems, as players under it."""
        from harmonia.songs import stems

        if self.song is None or self._task.running:
            return None
        song, stems_model = self.song, self.stems_model.value

        def work() -> str:
            done = stems(self.wb, song.id, model=stems_model, progress=self._on_step, cancel=self._stop)
            self.stems_artifact = done.artifact
            rows = []
            for out in done.artifact.outputs:
                label = widgets.HTML(
                    f"<b>{html.escape(out.prompt or out.path)}</b>", layout=widgets.Layout(width="90px")
                )  # under the fields' labels
                rows.append(widgets.HBox([label, player(done.artifact.file(out))],
                                         layout=widgets.Layout(align_items="center")))  # fmt: skip
            self.stems.children = rows
            facts = done.artifact.manifest.engine.details
            return (
                f"Stems {done.artifact.id}: their sum is within {facts['sum_max_abs_diff']:.3g} of the song."
            )

        return self.start(work)

    def transcribe(self) -> threading.Thread | None:
        """Transcribe the vocal stem (made first if needed) and mark the words not understood."""
        from harmonia.songs import stems, transcribe

        if self.song is None or self._task.running:
            return None
        song, lyrics = self.song, self.lyrics.value
        stems_model, transcribe_model = self.stems_model.value, self.transcribe_model.value

        def work() -> str:
            source = self.stems_artifact
            if source is None or source.manifest.parents[0].id != song.id:
                source = stems(self.wb, song.id, model=stems_model, progress=self._on_step, cancel=self._stop)
                source = source.artifact
                self.stems_artifact = source
            done = transcribe(
                self.wb,
                source.id,
                lyrics=lyrics or None,
                model=transcribe_model,
                progress=self._on_step,
                cancel=self._stop,
            )
            self.transcript_artifact = done.artifact
            details = done.artifact.manifest.engine.details
            self.transcript.value = transcript_html(details["intelligibility"], details["transcript"])
            return f"Transcript {done.artifact.id}."

        return self.start(work)

    def enable_buttons(self) -> None:
        """Generate always; the actions on a take once there is one."""
        self.generate_button.disabled = False
        for button in self.busy_buttons[1:]:
            button.disabled = self.song is None

    def show(self, art: Artifact) -> None:
        """Put a song on show: its player and picture, a range slider over its length."""
        self.song = art
        out = art.outputs[0]
        samples, rate = read_take(art.file(out))
        self.take.children = [widgets.HTML(take_title(art)), player(art.file(out)),
                              picture(samples, rate, out.prompt or "")]  # fmt: skip
        length = float(out.duration_s or 0.0)
        self.range.max = length
        self.range.value = (round(length / 3, 1), round(2 * length / 3, 1))
        self.range.disabled = False
        self.stems.children = ()
        self.transcript.value = ""
        self.summary.value = summary_html(art)

"""The video view: clips from a prompt, or a music video from a track and a shot list edited over its waveform.

The player loads the MP4 by URL (JupyterLab's ``/files/`` route), not as bytes over the
kernel's websocket (a minute of video is tens of MB, past JupyterLab's message limit); the
contact sheet (a small PNG) shows frames spread over the clip. The shot-list editor shows the
track's waveform with the cuts (solid) and the track's bar lines (dashed), which the cuts snap
to when it renders; each shot is a row of start, end and prompt. Generation runs in a worker
thread through the same :func:`~harmonia.generation.generate` as ``harmonia generate video``;
Stop ends it at the next denoising step and nothing is written.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from harmonia.artifacts import Artifact, list_artifacts
from harmonia.engines.base import choose_seed
from harmonia.errors import RequestError
from harmonia.generation import From
from harmonia.requests import VideoRequest, limits
from harmonia.ui.views import GenerateView, read_take, summary_html
from harmonia.workbench import Workbench

SOUNDTRACK_KINDS = ("music", "song")
PLAYER_MIN_PX, PLAYER_MAX_PX = 320, 640  # the player's width: the video's own, within these


def file_url(path: Path, root: Path) -> str:
    """The URL JupyterLab serves a file at: ``<base>files/<path relative to the server's root>``.

    The server's root is ``HARMONIA_FILES_ROOT`` when set (the folder JupyterLab was started
    in), else the workbench root (as in the compose files); the base is JupyterHub's service
    prefix when there is one, else ``/``.
    """
    served = Path(os.environ.get("HARMONIA_FILES_ROOT") or root).resolve()
    base = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    relative = Path(path).resolve().relative_to(served)
    return f"{base.rstrip('/')}/files/{relative.as_posix()}"


def video_player(path: Path, root: Path) -> widgets.Video:
    """A video player that loads the MP4 by URL (autoplay and loop off)."""
    url = file_url(path, root)
    return widgets.Video(value=url.encode(), format="url", autoplay=False, loop=False, controls=True)


def shots_picture(samples: np.ndarray, rate: int, cuts: list[float], bars: tuple[float, ...]) -> bytes:
    """The track's waveform with the shots' cuts (solid) and its bar lines (dashed), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    mono = samples.mean(axis=0)
    step = max(1, len(mono) // 4000)
    t = np.arange(0, len(mono), step) / rate
    figure = Figure(figsize=(9, 1.8), dpi=80)
    ax = figure.subplots()
    ax.plot(t, mono[::step], linewidth=0.5, color="#555")
    for bar in bars:
        ax.axvline(bar, color="#1976d2", linestyle="--", linewidth=0.8)
    for cut in cuts:
        ax.axvline(cut, color="#d32f2f", linewidth=1.5)
    ax.set_xlim(0, len(mono) / rate)
    ax.set_xlabel("seconds")
    ax.set_yticks([])
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


class ShotRow(widgets.HBox):
    """One shot: start, end (seconds), prompt, and a remove button."""

    def __init__(self, start: float, end: float, prompt: str, on_change, on_remove):
        self.start = widgets.FloatText(value=round(start, 3), step=0.1, layout=widgets.Layout(width="90px"))
        self.end = widgets.FloatText(value=round(end, 3), step=0.1, layout=widgets.Layout(width="90px"))
        self.prompt = widgets.Text(
            value=prompt, placeholder="what the shot shows", layout=widgets.Layout(width="420px")
        )
        self.remove = widgets.Button(
            icon="trash", tooltip="remove this shot", layout=widgets.Layout(width="40px")
        )
        for field in (self.start, self.end):
            field.observe(lambda _: on_change(), names="value")
        self.remove.on_click(lambda _: on_remove(self))
        super().__init__([self.start, self.end, self.prompt, self.remove])
        self.add_class("harmonia-shot")

    def to_json(self) -> dict:
        return {"start": float(self.start.value), "end": float(self.end.value), "prompt": self.prompt.value}


class VideoView(GenerateView):
    """The video widget. Display it in a notebook cell (``VideoView()`` as the last line).

    Example:
        >>> view = VideoView(model="tiny-wan")  # doctest: +SKIP
        >>> view.prompt.value = "a paper boat on a stream"; view.generate_button.click()  # doctest: +SKIP
        >>> view.wait(); view.player.value  # doctest: +SKIP
        b'/files/artifacts/5f0c8a4b2d1e9f37/take-0.mp4'
    """

    kind, engine, title = "video", "wan", "Video"

    def __init__(self, wb: Workbench | None = None, model: str | None = None):
        super().__init__(wb, model)  # model, Generate/Stop, progress, status, summary, log
        d = self.defaults.request
        bound = limits(VideoRequest)
        self._track = None  # (samples, rate, bars) of the chosen soundtrack
        style = self.field_style

        # 2. A clip, or a music video.
        self.mode = widgets.ToggleButtons(options=["clip", "music video"], value="clip", tooltips=[
            "a clip from a prompt", "clips cut to a music or song artifact, with it as the soundtrack"])  # fmt: skip
        make = widgets.HBox([widgets.HTML("<div style='text-align:right;padding-right:8px'>make</div>",
                                          layout=widgets.Layout(width="90px")), self.mode])  # fmt: skip
        # (a ToggleButtons' own description sits above its buttons in JupyterLab: a label beside them instead)
        self.prompt = widgets.Textarea(description="prompt", placeholder="e.g. a paper boat on a stream at dusk",
                                       style=style, layout=widgets.Layout(width="640px", height="50px"))  # fmt: skip
        self.width = widgets.BoundedIntText(value=int(d.get("width", 256)), min=16, max=int(bound["width"].high),
                                            step=16, description="width", style=style)  # fmt: skip
        self.height = widgets.BoundedIntText(value=int(d.get("height", 256)), min=16, max=int(bound["height"].high),
                                             step=16, description="height", style=style)  # fmt: skip
        self.frames = widgets.BoundedIntText(value=int(d.get("frames", 17)), min=1, max=int(bound["frames"].high),
                                             step=4, description="frames", style=style)  # fmt: skip
        self.fps = widgets.BoundedFloatText(value=float(d.get("fps", 16.0)), min=0.5, max=bound["fps"].high,
                                            description="fps", style=style)  # fmt: skip
        self.steps = widgets.BoundedIntText(value=int(d.get("steps", 30)), min=1, max=int(bound["steps"].high),
                                            description="steps", style=style)  # fmt: skip
        self.seed = widgets.IntText(value=choose_seed(), description="seed", style=style)

        # 3. The music video: a soundtrack artifact and the shot-list editor over its waveform.
        self.soundtrack = widgets.Dropdown(
            description="soundtrack", style=style, layout=widgets.Layout(width="640px")
        )
        self.soundtrack.observe(lambda _: self._load_track(), names="value")
        self.waveform = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.shot_rows = widgets.VBox()
        self.add_shot = widgets.Button(description="Add shot", icon="plus")
        self.split = widgets.BoundedIntText(value=4, min=1, max=64, description="shots", style=style,
                                            layout=widgets.Layout(width="170px"))  # fmt: skip
        self.split_button = widgets.Button(description="Split evenly", icon="columns")
        self.add_shot.on_click(lambda _: self._add_row())
        self.split_button.on_click(lambda _: self.split_evenly(int(self.split.value)))
        heading = widgets.HBox(
            [
                widgets.HTML("<b>start (s)</b>", layout=widgets.Layout(width="90px")),
                widgets.HTML("<b>end (s)</b>", layout=widgets.Layout(width="90px")),
                widgets.HTML("<b>shot prompt</b>"),
            ]
        )  # fmt: skip (over the rows' columns)
        self.music_fields = widgets.VBox([
            self.soundtrack, self.waveform,
            widgets.HTML("<small>red: the cuts between shots; dashed blue: the track's bars (the cuts snap to them "
                         "when it renders)</small>"),
            heading, self.shot_rows, widgets.HBox([self.add_shot, self.split, self.split_button]),
        ])  # fmt: skip
        self.mode.observe(lambda _: self._update_fields(), names="value")

        # 4. The player (by URL) and the contact sheet.
        self.player = widgets.Video(
            value=b"",
            format="url",
            autoplay=False,
            loop=False,
            controls=True,
            layout=widgets.Layout(display="none"),
        )  # fmt: skip (shown with a video)
        self.sheet = widgets.Image(format="png", layout=widgets.Layout(display="none", margin="0 0 0 8px"))
        self.clip_fields = widgets.VBox([self.prompt, self.frames])
        self.assemble(
            [make, self.clip_fields, self.music_fields, widgets.HBox([self.width, self.height, self.fps]),
             widgets.HBox([self.steps, self.seed])],
            [widgets.HBox([self.player, self.sheet], layout=widgets.Layout(align_items="flex-start"))],
        )  # fmt: skip
        self.refresh_soundtracks()
        self._update_fields()

    # -- the soundtrack and its shots ------------------------------------------------------
    def refresh_soundtracks(self) -> None:
        """List the music and song artifacts (newest first) as soundtracks."""
        arts = [a for a in list_artifacts(self.wb) if a.kind in SOUNDTRACK_KINDS and a.audio_outputs()]
        options = [(f"{a.id} {a.kind}: {(a.outputs[0].prompt or '')[:60]}", a.id) for a in arts]
        self.soundtrack.options = options or [("no music or song artifact yet: generate one", None)]
        self.soundtrack.value = options[0][1] if options else None

    def _load_track(self) -> None:
        from harmonia.artifacts import load_artifact
        from harmonia.shots import bar_lines

        if not self.soundtrack.value:
            self._track = None
            return
        art = load_artifact(self.wb, self.soundtrack.value)
        samples, rate = read_take(art.file(art.audio_outputs()[0]))
        bars, _ = bar_lines(samples, rate)
        self._track = (samples, rate, bars)
        if not self.shot_rows.children:
            self.split_evenly(int(self.split.value))
        self._draw()

    @property
    def track_duration_s(self) -> float | None:
        return None if self._track is None else self._track[0].shape[1] / self._track[1]

    def split_evenly(self, count: int) -> None:
        """Replace the shots with ``count`` equal ones over the track (prompts kept in order)."""
        duration = self.track_duration_s
        if duration is None:
            return
        prompts = [row.prompt.value for row in self.shot_rows.children]
        self.split.value = count
        self.shot_rows.children = ()
        for i in range(count):
            end = duration if i == count - 1 else round((i + 1) * duration / count, 3)
            self._add_row(round(i * duration / count, 3), end, prompts[i] if i < len(prompts) else "")

    def _add_row(self, start: float | None = None, end: float | None = None, prompt: str = "") -> None:
        rows = self.shot_rows.children
        if start is None:
            start = float(rows[-1].end.value) if rows else 0.0
            end = self.track_duration_s or start + 1.0
        row = ShotRow(start, end, prompt, self._draw, self._remove_row)
        self.shot_rows.children = (*rows, row)
        self._draw()

    def _remove_row(self, row: ShotRow) -> None:
        self.shot_rows.children = tuple(r for r in self.shot_rows.children if r is not row)
        self._draw()

    def shots(self) -> list[dict]:
        """The shot list the rows describe (checked by the engine when it renders)."""
        return [row.to_json() for row in self.shot_rows.children]

    def _draw(self) -> None:
        if self._track is None:
            return
        samples, rate, bars = self._track
        cuts = [float(row.end.value) for row in self.shot_rows.children][:-1]
        self.waveform.value = shots_picture(samples, rate, cuts, bars)

    def _update_fields(self) -> None:
        music = self.mode.value == "music video"
        self.music_fields.layout.display = None if music else "none"
        self.clip_fields.layout.display = "none" if music else None

    # -- generation ------------------------------------------------------------------------
    def build_request(self) -> tuple[str, VideoRequest]:
        """The model and request the fields describe (RequestError if there is no model)."""
        model = self.require_model()
        common = dict(seed=int(self.seed.value), width=int(self.width.value), height=int(self.height.value),
                      fps=float(self.fps.value), steps=int(self.steps.value))  # fmt: skip
        if self.mode.value == "music video":
            if not self.soundtrack.value:
                raise RequestError(
                    "a music video needs a soundtrack: generate music first, then pick it here."
                )
            request = self.defaults.request_for(
                (), soundtrack=From(self.soundtrack.value), shots=self.shots(), **common
            )
        else:
            request = self.defaults.request_for((self.prompt.value,), frames=int(self.frames.value), **common)
        return model, request

    def show(self, art: Artifact) -> None:
        """Put an artifact's first video in the player (by URL) and its contact sheet beside it."""
        out = next(o for o in art.outputs if o.media == "video")
        self.player.value = file_url(art.file(out), self.wb.root).encode()
        self.player.layout.width = f"{min(PLAYER_MAX_PX, max(PLAYER_MIN_PX, out.width or 0))}px"
        self.player.layout.display = None
        sheet = art.path / f"{Path(out.path).stem}-sheet.png"
        self.sheet.value = sheet.read_bytes() if sheet.is_file() else b""
        if sheet.is_file():  # its own width (a PNG says it at bytes 16-20), within the player's bounds
            width = int.from_bytes(self.sheet.value[16:20], "big")
            self.sheet.layout.width = f"{min(PLAYER_MAX_PX, max(PLAYER_MIN_PX, width))}px"
        self.sheet.layout.display = None if sheet.is_file() else "none"
        self.summary.value = summary_html(art) + (
            f"<div>{html.escape(out.path)}: {out.width}x{out.height}, {out.frame_count} frames at {out.fps:g} fps</div>"
        )

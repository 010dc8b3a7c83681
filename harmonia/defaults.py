"""One source of defaults: a params.yaml section per kind turns into a request the same way for
the CLI, the studio, the pipeline and the notebooks.

A kind's section (``music:`` for music) may hold: ``model``; any field of the kind's request
type (``duration_s``, ``temperature``, ``extend_stride_s``, ...); output settings (``format``,
``normalize_lufs``); runtime settings (``device``, ``dtype``, ``threads``, ``precision``); and
``batch_size`` (the pipeline's prompts per generation); ``prompts`` (a list of prompts for
the kind's pipeline stage, e.g. the samples stage's pack); and, for a kind whose requests have a
``task`` and a ``template`` (text), ``templates`` (task -> template). Anything else is refused with the
list of what is allowed. Values are checked by the engine's own checks when the request is
made, so a bad default fails the same way as a bad flag.

This module knows params.yaml's kind sections and the request types; not the CLI or widgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from harmonia.engines import KINDS, request_type
from harmonia.engines.base import Runtime
from harmonia.errors import ParamsError
from harmonia.manifest import OutputSettings
from harmonia.workbench import Workbench, check_section

OUTPUT_KEYS = {"format": "format", "normalize_lufs": "normalize_lufs"}
RUNTIME_KEYS = ("device", "dtype", "threads", "precision")
OTHER_KEYS = ("model", "batch_size", "templates", "prompts", "stems_model", "transcribe_model", "songs")
DEFAULT_BATCH = 8


@dataclass(frozen=True)
class KindDefaults:
    """A kind's defaults from params.yaml, split by what they set."""

    kind: str
    model: str | None
    request: dict[str, Any] = field(default_factory=dict)  # request fields (no prompts, no seed)
    output: OutputSettings = OutputSettings()
    runtime: Runtime = Runtime()
    batch_size: int = DEFAULT_BATCH
    templates: dict[str, str] = field(default_factory=dict)  # task -> template (text)
    prompts: tuple[str, ...] = ()  # the kind's pipeline stage's prompt list

    def run_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`harmonia.generation.generate` for output and runtime."""
        r = self.runtime
        return {
            "fmt": self.output.format,
            "normalize_lufs": self.output.normalize_lufs,
            "device": r.device,
            "dtype": r.dtype,
            "threads": r.threads,
            "precision": r.precision,
        }

    def request_for(self, prompts: Any, seed: int | None = None, **overrides: Any) -> Any:
        """The kind's request: these defaults, then ``overrides`` (None values keep the default)."""
        chosen = {**self.request, **{k: v for k, v in overrides.items() if v is not None}}
        task = chosen.get("task")
        if task is None and "task" in {f.name for f in fields(request_type(self.kind))}:
            task = next(f.default for f in fields(request_type(self.kind)) if f.name == "task")
        if chosen.get("template") is None and task in self.templates:
            chosen["template"] = self.templates[task]
        return request_type(self.kind)(prompts, seed=seed, **chosen)


def kind_defaults(wb: Workbench, kind: str) -> KindDefaults:
    """Read and check the params.yaml section of ``kind`` (an absent section means built-in defaults)."""
    info = KINDS[kind]
    section = check_section(wb.params, info.section)
    where = f"params.yaml: {info.section}"
    req_fields = {f.name for f in fields(request_type(kind))} - {"prompts", "seed"}
    allowed = sorted({*req_fields, *OUTPUT_KEYS, *RUNTIME_KEYS, *OTHER_KEYS})
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]} is not a setting of {kind}; allowed: {', '.join(allowed)}.")
    model = section.get("model")
    if model is not None and not isinstance(model, str):
        raise ParamsError(f"{where}.model must be a model name from 'models:', got {model!r}.")
    batch = section.get("batch_size", DEFAULT_BATCH)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ParamsError(
            f"{where}.batch_size must be a whole number >= 1 (prompts per generation), got {batch!r}."
        )
    templates = section.get("templates") or {}
    if not isinstance(templates, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in templates.items()
    ):
        raise ParamsError(f"{where}.templates must map task names to template text, got {templates!r:.80}.")
    if templates and "template" not in req_fields:
        raise ParamsError(f"{where}.templates is not a setting of {kind}: its requests take no template.")
    prompts = section.get("prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ParamsError(f"{where}.prompts must be a list of prompts (non-empty text), got {prompts!r}.")
    return KindDefaults(
        kind=kind,
        model=model,
        request={k: section[k] for k in req_fields if k in section},
        output=OutputSettings(section.get("format", "wav"), section.get("normalize_lufs")),
        runtime=Runtime(*(section.get(k) for k in RUNTIME_KEYS[:3]), section.get("precision") or "exact"),
        batch_size=batch,
        templates=dict(templates),
        prompts=tuple(prompts),
    )

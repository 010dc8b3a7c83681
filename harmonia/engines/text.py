"""Text: a language model writes a music prompt, lyrics, a shot list or sample prompts from an idea.

Two backends, chosen per model in params.yaml:

- a snapshot (``repo:`` or ``builder:``): a transformers causal LM loaded in process
  (a small instruct model such as Qwen2.5-0.5B-Instruct; the tiny one is built in code).
  Greedy by default, so the same request gives the same bytes on the same machine;
  with a temperature it samples on the request's own seeded stream.
- an ``endpoint:``: any OpenAI-compatible chat completions server (``transformers serve``,
  vLLM, llama.cpp's server, ...). It has no snapshot: its identity is the base URL and the
  model name asked for (:class:`~harmonia.engines.base.RemoteInventory`), the answer is
  cached by artifact id like any other, and the manifest records the model the server
  reported and that the answer is **not reproducible** (the server's weights and code are
  not ours to pin). The key comes from the environment or ``.env`` (``api_key_env``) and is
  sent in the Authorization header only: never written, logged or put in a message.

Each task has a template (params.yaml ``text.templates.TASK``) with placeholders that the
request fills, and a check of the answer: a prompt is one line; lyrics carry section tags in
the order asked, with lines that fit the duration; a shot list is JSON covering the track
without gaps or overlaps; sample prompts are a JSON list of the size asked. An answer that
fails its check makes no artifact: :class:`~harmonia.errors.OutputError` says what was
wrong, and the raw answer is kept in ``.harmonia/rejected/`` for inspection.

The engine knows nothing about artifacts, manifests or the UI.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import string
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from harmonia.audio import Audio, read_audio
from harmonia.engines.base import (
    DTYPES,
    TOKENIZER_LOCK,
    TORCH_LOCK,
    Cancel,
    LoadedModel,
    Progress,
    Runtime,
    Steps,
    Timer,
    check_seed,
    choose_seed,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
    pinned_threads,
    quiet_transformers,
    seeded,
    snapshot_tokenizer,
)
from harmonia.errors import EndpointError, OutputError, RequestError
from harmonia.media import TextTake
from harmonia.requests import MAX_IDEA_CHARS, TEXT_TASKS, TextRequest, check_limits
from harmonia.workbench import SnapshotSpec, Workbench

PROMPT_MAX_CHARS = 500  # a music prompt is a sentence or two
SECONDS_PER_LINE = 2.0  # a sung line takes at least this long
DEFAULT_STRUCTURE = "verse chorus verse chorus bridge chorus"
SECTION_TAGS = ("intro", "verse", "pre-chorus", "chorus", "bridge", "inst", "outro")
SHOT_TOLERANCE_S = 0.5  # how far the last shot's end may be from the track's end
MAX_ANSWER_BYTES = 8 << 20

TEMPLATES: dict[str, str] = {
    "prompt": (
        "Write one prompt for a text-to-music model from this idea: {idea}\n"
        "Answer with the prompt only, on one line: genre, mood, instruments, tempo. "
        "No quotes, no explanations."
    ),
    "lyrics": (
        "Write song lyrics about: {idea}\n"
        "The song lasts {duration_s} seconds. Its sections, in this order: {structure}.\n"
        "Start each section with its tag on a line of its own: [verse], [chorus], [bridge], [intro], "
        "[outro], [pre-chorus], or [inst] for an instrumental section without lines. "
        "Write at most {max_lines} short lines per section. Answer with the lyrics only."
    ),
    "shots": (
        "Write a shot list for a music video about: {idea}\n"
        "The track lasts {duration_s} seconds. Its sections or beats: {sections}.\n"
        'Answer with JSON only: a list of objects {{"start": seconds, "end": seconds, "prompt": '
        '"what the shot shows"}}, sorted by start, the first starting at 0, each starting where '
        "the previous one ends, the last ending at {duration_s}."
    ),
    "sfx": (
        "List {count} prompts for sound effects or samples for this scene: {idea}\n"
        "Each prompt describes one sound in a few words. "
        "Answer with JSON only: a list of {count} strings."
    ),
}
# task -> (placeholders its template must have, placeholders it may have)
PLACEHOLDERS: dict[str, tuple[set[str], set[str]]] = {
    "prompt": ({"idea"}, {"idea", "duration_s"}),
    "lyrics": ({"idea", "duration_s", "structure"}, {"idea", "duration_s", "structure", "max_lines"}),
    "shots": ({"idea", "duration_s"}, {"idea", "duration_s", "sections"}),
    "sfx": ({"idea", "count"}, {"idea", "count"}),
}
SUFFIXES = {"prompt": ".txt", "lyrics": ".txt", "shots": ".json", "sfx": ".json"}
SHOT_SCHEMA = {  # what a shot list is (checked by check_shots, which also checks the timing)
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["start", "end", "prompt"],
        "additionalProperties": False,
        "properties": {
            "start": {"type": "number", "minimum": 0},
            "end": {"type": "number"},
            "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX_CHARS},
        },
    },
}


# -- templates -------------------------------------------------------------------------------------
def template_fields(template: str, task: str) -> set[str]:
    """The placeholders of a template; RequestError when it lacks one its task needs or has an unknown one."""
    where = f"text.templates.{task}"
    try:
        found = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise RequestError(
            f"{where} is not a valid template ({exc}); write literal braces as {{{{ and }}}}."
        ) from None
    required, allowed = PLACEHOLDERS[task]
    odd = sorted(n for n in found if n not in allowed)
    if odd:
        raise RequestError(
            f"{where} has the placeholder {{{odd[0]}}}, which the {task} task does not fill; it may use "
            f"{', '.join('{' + n + '}' for n in sorted(allowed))} (literal braces: {{{{ and }}}})."
        )
    missing = sorted(required - found)
    if missing:
        raise RequestError(
            f"{where} lacks the placeholder {{{missing[0]}}}: without it the model never sees the "
            f"{missing[0].replace('_', ' ')}. It must have {', '.join('{' + n + '}' for n in sorted(required))}."
        )
    return found


def structure_of(request: TextRequest) -> list[str]:
    """The requested song sections, as tags ("verse", "chorus", ...)."""
    return [s.strip("[],").lower() for s in re.split(r"[\s,]+", request.structure or "") if s.strip("[],")]


def max_lines(duration_s: float, sections: int) -> int:
    """The most sung lines one section can hold: its share of the song at SECONDS_PER_LINE a line."""
    return max(1, math.floor(duration_s / max(sections, 1) / SECONDS_PER_LINE))


def render(request: TextRequest) -> str:
    """The user message: the request's template filled with its fields."""
    duration = "" if request.duration_s is None else f"{request.duration_s:g}"
    values = {
        "idea": request.idea,
        "duration_s": duration,
        "structure": ", ".join(structure_of(request)),
        "max_lines": max_lines(request.duration_s or 0, len(structure_of(request))),
        "sections": request.sections or "not given",
        "count": request.count,
    }
    return request.template.format_map(values)


def messages_of(request: TextRequest) -> list[dict[str, str]]:
    return [{"role": "user", "content": render(request)}]


# -- checks of the answers ------------------------------------------------------------------------
class Rejected(ValueError):
    """An answer that fails its task's check (the engine turns it into an OutputError)."""


def _unfence(text: str) -> str:
    """The answer without one surrounding Markdown code fence (```json ... ```), which models like to add."""
    m = re.fullmatch(r"\s*```[\w-]*\s*\n(.*?)\n?```\s*", text, flags=re.DOTALL)
    return m.group(1) if m else text


def check_prompt(answer: str, request: TextRequest) -> str:
    """One line of text, not empty, at most PROMPT_MAX_CHARS; surrounding quotes are dropped."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        raise Rejected("the answer is empty; a music prompt is one line of text")
    if len(lines) > 1:
        raise Rejected(f"the answer has {len(lines)} lines; a music prompt is one line")
    prompt = lines[0].strip("\"'` ")
    if not any(c.isalpha() for c in prompt):
        raise Rejected(f"the answer {prompt[:40]!r} has no words")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise Rejected(
            f"the prompt has {len(prompt)} characters; at most {PROMPT_MAX_CHARS} make a music prompt"
        )
    return prompt + "\n"


def check_lyrics(answer: str, request: TextRequest) -> str:
    """Section tags in the order of the structure; each sung section has 1..max_lines lines, [inst] none."""
    wanted = structure_of(request)
    limit = max_lines(request.duration_s, len(wanted))
    sections: list[tuple[str, list[str]]] = []
    for raw in answer.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        tag = re.fullmatch(r"\[\s*([A-Za-z-]+)(?:\s*\d+)?\s*\]", line)
        if tag:
            name = tag.group(1).lower()
            if name not in SECTION_TAGS:
                raise Rejected(
                    f"[{name}] is not a section tag; known: {', '.join(f'[{t}]' for t in SECTION_TAGS)}"
                )
            sections.append((name, []))
        elif not sections:
            raise Rejected(f"the lyrics start with {line[:40]!r}, not with a section tag such as [verse]")
        else:
            sections[-1][1].append(line)
    if not sections:
        raise Rejected("the answer has no section tags ([verse], [chorus], ...)")
    found = [name for name, _ in sections]
    if found != wanted:
        raise Rejected(f"the sections are {', '.join(found)} but the structure asks for {', '.join(wanted)}")
    for i, (name, lines) in enumerate(sections):
        if name == "inst" and lines:
            raise Rejected(f"[inst] (section {i + 1}) is instrumental but has {len(lines)} lines")
        if name != "inst" and not lines:
            raise Rejected(f"[{name}] (section {i + 1}) has no lines")
        if len(lines) > limit:
            raise Rejected(
                f"[{name}] (section {i + 1}) has {len(lines)} lines; at {SECONDS_PER_LINE:g} s a line, "
                f"{len(wanted)} sections in {request.duration_s:g} s hold at most {limit} lines each"
            )
    return "\n\n".join("\n".join([f"[{name}]", *lines]) for name, lines in sections) + "\n"


def check_shots(answer: str, request: TextRequest) -> str:
    """JSON per SHOT_SCHEMA; sorted, from 0, no gap, no overlap, ending at the track's end."""
    try:
        shots = json.loads(_unfence(answer))
    except ValueError as exc:
        raise Rejected(f"the answer is not JSON ({exc})") from None
    if not isinstance(shots, list) or not shots:
        raise Rejected("the answer is not a non-empty JSON list of shots")
    duration = request.duration_s
    for i, shot in enumerate(shots):
        if not isinstance(shot, dict) or set(shot) != {"start", "end", "prompt"}:
            keys = sorted(shot) if isinstance(shot, dict) else type(shot).__name__
            raise Rejected(f"shot {i} must have exactly start, end and prompt, got {keys}")
        start, end, prompt = shot["start"], shot["end"], shot["prompt"]
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise Rejected(f"shot {i}: {name} must be a number of seconds, got {value!r}")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROMPT_MAX_CHARS:
            raise Rejected(f"shot {i}: prompt must be text of 1 to {PROMPT_MAX_CHARS} characters")
        if end <= start:
            raise Rejected(f"shot {i} ends at {end:g} s, not after its start {start:g} s")
        previous = shots[i - 1]["end"] if i else 0.0
        if start < previous - 1e-6:
            raise Rejected(
                f"shot {i} starts at {start:g} s, before the previous one ends ({previous:g} s): overlap"
            )
        if start > previous + 1e-6:
            raise Rejected(
                f"shot {i} starts at {start:g} s, after the previous one ends ({previous:g} s): a gap"
            )
        if end > duration + SHOT_TOLERANCE_S:
            raise Rejected(f"shot {i} ends at {end:g} s, past the track's end ({duration:g} s)")
    last = shots[-1]["end"]
    if last < duration - SHOT_TOLERANCE_S:
        raise Rejected(f"the shots end at {last:g} s, before the track does ({duration:g} s)")
    clean = [{"start": s["start"], "end": s["end"], "prompt": s["prompt"].strip()} for s in shots]
    return json.dumps(clean, indent=2, ensure_ascii=False) + "\n"


def check_sfx(answer: str, request: TextRequest) -> str:
    """A JSON list of ``count`` different, non-empty prompts."""
    try:
        prompts = json.loads(_unfence(answer))
    except ValueError as exc:
        raise Rejected(f"the answer is not JSON ({exc})") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise Rejected("the answer is not a JSON list of non-empty strings")
    if len(prompts) != request.count:
        raise Rejected(f"the answer lists {len(prompts)} prompts; {request.count} were asked for")
    clean = [p.strip() for p in prompts]
    if len(set(clean)) != len(clean):
        raise Rejected("the answer lists the same prompt twice")
    long = next((p for p in clean if len(p) > PROMPT_MAX_CHARS), None)
    if long is not None:
        raise Rejected(f"a prompt has {len(long)} characters; the limit is {PROMPT_MAX_CHARS}")
    return json.dumps(clean, indent=2, ensure_ascii=False) + "\n"


CHECKS = {"prompt": check_prompt, "lyrics": check_lyrics, "shots": check_shots, "sfx": check_sfx}


# -- the result ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextResult:
    """What a text generation produced: the checked text, and how it was made."""

    text: str  # the checked, normalised answer (what the artifact holds)
    raw: str  # the model's answer as it came
    request: TextRequest
    track: Audio | None
    steps: int  # tokens generated (1 for a server's answer when it reports none)
    generate_s: float
    info: dict[str, Any]  # backend, tokens, finish reason, the server's model, reproducible

    @property
    def takes(self) -> tuple[TextTake, ...]:
        return (TextTake(self.text, self.request.idea[:200], SUFFIXES[self.request.task]),)

    @property
    def inputs(self) -> dict[str, Audio | None]:
        return {"track": self.track}

    def details(self) -> dict[str, Any]:
        return {"task": self.request.task, **self.info}


class _StepWatch:
    """A stopping criterion that never stops: it calls ``on_step`` after every token (progress, cancel)."""

    def __init__(self, on_step):
        self.on_step = on_step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.on_step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# -- the engine ---------------------------------------------------------------------------------
class TextEngine:
    """A language model that writes for a task: in process (a snapshot) or behind an endpoint.

    Example:
        >>> engine = TextEngine.load(Workbench.open(), "tiny-lm")  # doctest: +SKIP
        >>> engine.generate(TextRequest("rain", task="prompt", seed=0)).text  # doctest: +SKIP
        'pgeizyspgeizys...\\n'
    """

    name: ClassVar[str] = "text"
    kind: ClassVar[str] = "text"
    code_version: ClassVar[int] = 1  # bump when a change here changes output bytes
    packages: ClassVar[tuple[str, ...]] = ("torch", "transformers", "tokenizers")
    request_type: ClassVar[type] = TextRequest
    precisions: ClassVar[tuple[str, ...]] = ("exact",)

    def __init__(self, loaded: LoadedModel, root: Path, model=None, tokenizer=None):
        self.loaded, self.root = loaded, root  # the workbench: its .env, its .harmonia/rejected/
        self.model, self.tokenizer = model, tokenizer  # None for an endpoint
        self.device = torch.device(loaded.device)
        self.rejected_dir = root / ".harmonia" / "rejected"

    @property
    def remote(self) -> bool:
        return self.loaded.spec.remote

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, wb: Workbench, name: str, runtime: Runtime | None = None, **settings: Any) -> TextEngine:
        """Load a causal LM snapshot (verified, safetensors, no remote code), or set up an endpoint model."""
        runtime = runtime or Runtime(**settings)
        chosen = pick_device(runtime.device)
        cls.check_runtime(runtime)
        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, cls.name)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            model = tokenizer = None
            if path is not None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                with pinned_threads(threads), quiet_transformers():
                    model = AutoModelForCausalLM.from_pretrained(
                        path, local_files_only=True, use_safetensors=True, trust_remote_code=False,
                        dtype=DTYPES[dtype],
                    )  # fmt: skip
                model = model.to(chosen).eval()
                with quiet_transformers():  # its own instance: checks use the shared one
                    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        return cls(loaded, wb.root, model, tokenizer)

    def describe(self) -> dict:
        """The manifest's engine entry."""
        if self.remote:
            spec = self.loaded.spec
            return {"name": self.name, "backend": "openai-chat", "endpoint": spec.endpoint,
                    "served_model": spec.served_model}  # fmt: skip
        return {
            "name": self.name,
            "backend": "transformers",
            "class": type(self.model).__name__,
            "context_tokens": _context(self.loaded.path),
        }

    # -- checks ----------------------------------------------------------------------------
    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision not in cls.precisions:
            raise RequestError(f"precision must be 'exact' for the text engine, got {runtime.precision!r}.")

    @classmethod
    def check(cls, request: TextRequest, snapshot: Path | None) -> TextRequest:
        """Every check that needs no loaded model; returns the request with its seed, template and track.

        ``snapshot`` None: a model served by an endpoint (its context is the server's to check).
        """
        # 1. The task, the idea, the limits, what the task uses.
        if request.task not in TEXT_TASKS:
            raise RequestError(f"task must be one of {', '.join(TEXT_TASKS)}, got {request.task!r}.")
        task = request.task
        if not isinstance(request.idea, str) or not request.idea.strip():
            raise RequestError("idea is empty: describe what to write about in a few words.")
        if len(request.idea) > MAX_IDEA_CHARS:
            raise RequestError(f"idea has {len(request.idea)} characters; the limit is {MAX_IDEA_CHARS}.")
        check_limits(request)
        seed = choose_seed() if request.seed is None else check_seed(request.seed)
        for name, owner in (("structure", "lyrics"), ("sections", "shots"), ("track", "shots")):
            if getattr(request, name) is not None and task != owner:
                raise RequestError(f"{name} is for the {owner} task; the {task} task does not use it.")
        # 2. The task's own needs: a duration (lyrics, shots: the track's), a structure.
        track = read_audio(request.track, "track") if request.track is not None else None
        duration = request.duration_s
        if track is not None:
            if duration is not None and abs(duration - track.duration_s) > 0.05:
                raise RequestError(
                    f"duration_s is {duration:g} but the track lasts {track.duration_s:.2f} s; "
                    "leave duration_s out to use the track's."
                )
            duration = round(track.duration_s, 3)
        if task in ("lyrics", "shots") and duration is None:
            what = "--duration SECONDS" + (" or --track FILE|ID" if task == "shots" else "")
            raise RequestError(f"the {task} task needs the song's length: give {what}.")
        structure = request.structure
        if task == "lyrics":
            structure = structure if structure is not None else DEFAULT_STRUCTURE
            wanted = structure_of(replace(request, structure=structure))
            odd = next((s for s in wanted if s not in SECTION_TAGS), None)
            if not wanted or odd is not None:
                raise RequestError(
                    f"structure must be section names from {', '.join(SECTION_TAGS)} in order, got {structure!r}."
                )
        # 3. The template: the task's own placeholders, none unknown.
        template = request.template if request.template is not None else TEMPLATES[task]
        if not isinstance(template, str) or not template.strip():
            raise RequestError(
                f"text.templates.{task} is empty; write the task's instructions with its placeholders."
            )
        template_fields(template, task)
        request = replace(
            request, seed=seed, duration_s=duration, structure=structure, template=template, track=track
        )
        # 4. The whole prompt fits the model's context, the answer's tokens included.
        if snapshot is not None:
            _check_context(request, snapshot)
        return request

    @classmethod
    def check_resources(cls, request: TextRequest, snapshot: Path | None) -> None:
        """Nothing beyond check(): a small LM's memory is its weights (the context is checked there)."""

    @classmethod
    def fast_paths(
        cls, wb: Workbench, snapshot: Path | None, runtime: Runtime
    ) -> tuple[tuple[str, str], ...]:
        """None: the text engine takes transformers' own paths."""
        return ()

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, request: TextRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> TextResult:
        """Write for the request's task; the answer is checked (OutputError, raw kept, when it fails).

        Args:
            request: the :class:`~harmonia.requests.TextRequest`.
            progress: ``progress(done, total)`` after every token (a server's answer: one step).
            cancel: stops before the next token (or before the server is asked).
        """
        request = self.check(request, None if self.remote else self.loaded.path)
        track = request.track
        with Timer() as timer:
            if self.remote:
                raw, info = self._ask_server(request, Steps(1, progress, cancel))
            else:
                with TORCH_LOCK:
                    raw, info = self._write(request, Steps(request.max_new_tokens, progress, cancel))
        try:
            text = CHECKS[request.task](raw, request)
        except Rejected as why:
            kept = self._keep_rejected(request.task, raw)
            cut = (
                f" (it was cut at max_new_tokens={request.max_new_tokens})"
                if info.get("finish") == "length"
                else ""
            )
            raise OutputError(
                f"{request.task}: the model's answer failed the check: {why}{cut}. No artifact was made; the raw "
                f"answer is kept in {kept}. Try another seed or model, or edit text.templates.{request.task} "
                "in params.yaml."
            ) from None
        return TextResult(
            text,
            raw,
            replace(request, track=None),
            track,
            max(info.get("new_tokens") or 1, 1),
            timer.seconds,
            info,
        )

    def _write(self, request: TextRequest, step: Steps) -> tuple[str, dict[str, Any]]:
        """In process: the chat template, then greedy decoding (or sampling on the request's seed)."""
        from transformers import GenerationConfig, StoppingCriteriaList

        sampling = request.temperature > 0
        config = GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            do_sample=sampling,
            temperature=request.temperature if sampling else None,
            top_p=request.top_p if sampling else None,
            top_k=None,
            repetition_penalty=None,
            eos_token_id=self.model.generation_config.eos_token_id,
            pad_token_id=self.model.generation_config.pad_token_id or self.tokenizer.pad_token_id,
        )
        with torch.inference_mode(), pinned_threads(self.loaded.threads), quiet_transformers():
            encoded = self.tokenizer.apply_chat_template(
                messages_of(request), add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            with seeded(request.seed, self.device):
                out = self.model.generate(
                    **encoded,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([_StepWatch(step)]),
                )
        prompt_tokens = encoded["input_ids"].shape[1]
        new = out[0, prompt_tokens:]
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        finished = bool(len(new)) and int(new[-1]) in eos
        info = {
            "prompt_tokens": prompt_tokens,
            "new_tokens": len(new),
            "finish": "stop" if finished else "length",
            "decoding": "sampling" if sampling else "greedy",
            "reproducible": True,
        }
        return self.tokenizer.decode(new, skip_special_tokens=True), info

    def _ask_server(self, request: TextRequest, step: Steps) -> tuple[str, dict[str, Any]]:
        """An OpenAI-compatible chat completion; every failure is one EndpointError naming the URL."""
        spec = self.loaded.spec
        if step.cancelled():
            step()  # raises Cancelled before the server is asked
        body = {
            "model": spec.served_model,
            "messages": messages_of(request),
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stream": False,
        }
        data = _post_json(spec, self.root, "/chat/completions", body)
        try:
            choice = data["choices"][0]
            raw = choice["message"]["content"]
            if not isinstance(raw, str):
                raise TypeError("content is not text")
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointError(
                f"The text server at {spec.endpoint} answered JSON that is not a chat completion "
                f"(no choices[0].message.content: {exc}). Is it an OpenAI-compatible server? Nothing was written."
            ) from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        step()
        info = {
            "served_model": spec.served_model,
            "reported_model": data.get("model") if isinstance(data.get("model"), str) else None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "new_tokens": usage.get("completion_tokens"),
            "finish": choice.get("finish_reason"),
            "decoding": "sampling" if request.temperature > 0 else "greedy",
            "reproducible": False,
            "why_not_reproducible": f"answered by the server at {spec.endpoint}, whose weights and code "
            "Harmonia does not pin",
        }
        return raw, info

    def _keep_rejected(self, task: str, raw: str) -> str:
        """Keep a rejected answer as .harmonia/rejected/TASK-SHA12.txt; returns its path relative to the workbench."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejected_dir / f"{task}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}.txt"
        path.write_text(raw, encoding="utf-8")
        return f".harmonia/rejected/{path.name}"


# -- helpers ------------------------------------------------------------------------------------


def _context(snapshot: Path) -> int:
    """The model's context in tokens (config.json's max_position_embeddings)."""
    config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    context = config.get("max_position_embeddings") or (config.get("text_config") or {}).get(
        "max_position_embeddings"
    )
    if not isinstance(context, int):
        raise RequestError(f"{snapshot / 'config.json'} has no max_position_embeddings; is it a causal LM?")
    return context


def _check_context(request: TextRequest, snapshot: Path) -> None:
    """The chat prompt plus max_new_tokens fit the model's context; RequestError saying the limit otherwise."""
    context = _context(snapshot)
    with TOKENIZER_LOCK:  # a fast tokenizer is not safe to share between threads
        tokenizer = snapshot_tokenizer(snapshot)
        if tokenizer.chat_template is None:
            raise RequestError(
                f"model '{snapshot.name}' has no chat template; pick an instruct (chat) model."
            )
        count = len(tokenizer.apply_chat_template(messages_of(request), add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])  # fmt: skip
    if count + request.max_new_tokens > context:
        over = count + request.max_new_tokens - context
        raise RequestError(
            f"idea is too long for model '{snapshot.name}': with the {request.task} template the prompt is {count} "
            f"tokens, and max_new_tokens asks for {request.max_new_tokens} more, but the model's context holds "
            f"{context} tokens. Shorten the idea by about {over} tokens or lower --max-tokens."
        )


def api_key(spec: SnapshotSpec, root: Path) -> str | None:
    """The endpoint's key: the environment's ``api_key_env``, else the workbench's .env; None if neither."""
    if os.environ.get(spec.api_key_env):
        return os.environ[spec.api_key_env]
    env_file = root / ".env"
    if env_file.is_file():
        from dotenv import dotenv_values

        return dotenv_values(env_file).get(spec.api_key_env) or None
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: urllib would send the Authorization header (the key) to the new host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx code


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post_json(spec: SnapshotSpec, root: Path, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to the endpoint and parse the JSON answer, within the spec's timeout."""
    key = api_key(spec, root)
    url = spec.endpoint + route
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    where = f"The text server at {spec.endpoint}"
    fix = f"models.{spec.name}"

    def redact(text: str) -> str:
        return text.replace(key, "[key]") if key else text

    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=spec.timeout_s) as answer:
            payload = answer.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = redact(exc.read(2000).decode("utf-8", "replace").strip())
        exc.close()
        if exc.code in (401, 403):
            raise EndpointError(
                f"{where} refused the request (HTTP {exc.code}): set {spec.api_key_env} in the environment "
                f"or .env to a key it accepts. Nothing was written."
            ) from None
        if exc.code in (400, 404) and (spec.served_model in detail or "model_not_found" in detail):
            raise EndpointError(
                f"{where} does not serve the model '{spec.served_model}' (HTTP {exc.code}: {detail[:300]}). "
                f"Fix {fix}.served_model in params.yaml (the server's /models lists what it serves). "
                "Nothing was written."
            ) from None
        if 300 <= exc.code < 400:
            raise EndpointError(
                f"{where} redirects (HTTP {exc.code}); Harmonia does not follow redirects, which would send "
                f"the key elsewhere. Set {fix}.endpoint in params.yaml to the final base URL. Nothing was written."
            ) from None
        raise EndpointError(
            f"{where} answered HTTP {exc.code} ({exc.reason}): {detail[:300] or 'no detail'}. Nothing was written."
        ) from None
    except TimeoutError:
        raise EndpointError(
            f"{where} did not answer within {spec.timeout_s:g} s ({fix}.timeout_s in params.yaml). "
            "Raise the timeout, ask for fewer tokens, or check the server. Nothing was written."
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise EndpointError(
                f"{where} did not answer within {spec.timeout_s:g} s ({fix}.timeout_s in params.yaml). "
                "Raise the timeout, ask for fewer tokens, or check the server. Nothing was written."
            ) from None
        if isinstance(reason, ConnectionRefusedError):
            raise EndpointError(
                f"{where} refused the connection (is it running?). Start it (e.g. `transformers serve`) "
                f"or fix {fix}.endpoint in params.yaml. Nothing was written."
            ) from None
        raise EndpointError(
            f"{where} could not be reached ({redact(str(reason))}). Check {fix}.endpoint in params.yaml. "
            "Nothing was written."
        ) from None
    except (ConnectionError, OSError) as exc:  # reset or closed mid-answer
        raise EndpointError(
            f"{where} broke off the answer ({type(exc).__name__}). Check the server. Nothing was written."
        ) from None
    if len(payload) > MAX_ANSWER_BYTES:
        raise EndpointError(
            f"{where} answered more than {MAX_ANSWER_BYTES >> 20} MiB; refused. Nothing was written."
        )
    try:
        data = json.loads(payload)
    except ValueError:
        start = redact(payload[:60].decode("utf-8", "replace"))
        raise EndpointError(
            f"{where} answered something that is not JSON ({start!r}...). Is the endpoint the server's "
            f"OpenAI-compatible base URL (ending in /v1)? Nothing was written."
        ) from None
    if not isinstance(data, dict):
        raise EndpointError(f"{where} answered JSON that is not an object. Nothing was written.")
    return data

"""Batches of requests: a file of rows run on a process pool here or on a Ray cluster, same artifacts.

A batch file (``harmonia batch FILE.yaml``) lists requests of any kind, or a product of
prompts x seeds x models, or both. :func:`load_batch` reads it with the limits of
:mod:`harmonia.safeload` and checks every row before anything runs (no model is loaded, nothing
is written): a bad field is one line naming the row and the field. :func:`run_batch` then runs
each row through :func:`harmonia.generation.generate` (or ``derive`` for kinds made without a
model), so a row's artifact id and bytes are those of a plain ``harmonia generate`` with the
same request and settings:

- ``local``: a process pool on this machine; each worker keeps the last model it loaded, and
  rows are handed out grouped by model, so a worker loads a model once.
- ``ray``: Ray Data on the cluster at ``RAY_ADDRESS`` (or a local one started for the run): an
  actor pool (``ActorPoolStrategy``) whose actors load the model once each, with the CPUs and
  GPUs per actor from params.yaml's ``batch.ray`` and a check first that some node has them.

Every row ends as an artifact id or as the message of the error that stopped it: each row is
caught on its own inside the worker, so one failure never drops its batch-mates; a worker
that dies has its rows run again (a fresh local pool; Ray's actor restarts and task retries).
Rows carry their own seed (given, or derived from the row's content), and threads are fixed
per row (``batch.threads``), so a row makes the same bytes whichever worker runs it. Workers
write through the atomic artifact store into the workbench's artifacts/ (a folder every worker
sees: a shared filesystem on a cluster), and a row whose artifact exists is a cache hit. With
``batch.ray.results: driver`` no shared folder is needed: each actor writes into a private
scratch store on its node and returns the finished artifact's files, which the driver checks
against the manifest's sha256 and installs atomically into its own artifacts/ (:func:`install_files`).

This module knows rows, executors and the generation path; it imports Ray only when the ray
executor runs, and knows nothing of the CLI or widgets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harmonia.errors import ClusterError, FileFormatError, HarmoniaError, ParamsError, RequestError
from harmonia.safeload import load_yaml
from harmonia.workbench import Workbench

EXECUTORS = ("local", "ray")
MAX_ROWS = 100_000
SETTING_KEYS = ("format", "normalize_lufs", "device", "dtype", "threads", "precision")
ROW_KEYS = ("kind", "model", "engine", "prompt", "prompts", "seed")
PRODUCT_KEYS = ("prompts", "seeds", "models")
DEFAULT_THREADS = 1
RAY_KEYS = ("cpus_per_actor", "gpus_per_actor", "max_restarts", "max_task_retries", "results")
RESULTS = ("shared", "driver")  # batch.ray.results: where a row's artifact ends (see RayRows)
MAX_RESULT_BYTES = 256 * 1024 * 1024  # the most one row returns to the driver (results: driver)
# the actors' scratch stores (results: driver); default: TMPDIR/harmonia-scratch
SCRATCH_ENV = "HARMONIA_SCRATCH"


# -- what a batch is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchRow:
    """One request of a batch, checked, in plain data (it travels to worker processes and actors)."""

    index: int  # position in the batch (0-based), the order of the summary
    where: str  # how messages name it: "rows[3]" or "product[prompt 1, seed 0, model tiny-musicgen]"
    kind: str
    model: str | None  # None: a kind made without a model (a pack), run by ``engine``
    engine: str | None
    request: dict[str, Any]  # the request dataclass's fields (prompts, seed, duration_s, ...)
    settings: dict[str, Any]  # generate()'s keywords: fmt, normalize_lufs, device, dtype, threads, precision

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "where": self.where, "kind": self.kind, "model": self.model,
            "engine": self.engine, "request": self.request, "settings": self.settings,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRow:
        return cls(**data)


@dataclass(frozen=True)
class ExecutorConfig:
    """How a batch runs: params.yaml's ``batch:`` section, then the command line."""

    executor: str = "local"
    workers: int = 2  # pool processes / Ray actors
    threads: int = DEFAULT_THREADS  # torch threads per row (part of the id: keep it fixed)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_restarts: int = 3  # a killed actor is started again this often
    max_task_retries: int = 3  # and the rows it held are run again this often
    # shared: actors write artifacts/ (a folder every node sees); driver: they return the files
    results: str = "shared"


@dataclass(frozen=True)
class RowResult:
    """How one row ended: an artifact (made now or found) or the message of its error."""

    index: int
    where: str
    artifact: str | None
    cached: bool
    error: str | None
    seconds: float
    worker: int | None = None  # the process that ran it

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BatchReport:
    """A batch's outcome: one result per row, in row order, and the time it took."""

    executor: str
    results: tuple[RowResult, ...]
    seconds: float  # wall time, start-up included
    startup_s: float  # starting the pool, or connecting to (or starting) the cluster and checking it
    first_row_s: float | None = None  # until the first result came back (workers up, a model loaded)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def done(self) -> int:
        return sum(1 for r in self.results if r.artifact is not None and not r.cached)

    @property
    def cached(self) -> int:
        return sum(1 for r in self.results if r.cached)

    @property
    def failed(self) -> tuple[RowResult, ...]:
        return tuple(r for r in self.results if r.error is not None)

    def table(self) -> list[tuple[str, ...]]:
        """The summary: rows, done, cached, failed, seconds, rows per minute."""
        made = len(self.results) - len(self.failed)
        rate = f"{60 * made / self.seconds:.1f}" if self.seconds > 0 else "-"
        first = f"{self.first_row_s:.1f}" if self.first_row_s is not None else "-"
        return [
            ("EXECUTOR", "ROWS", "DONE", "CACHED", "FAILED", "SECONDS", "START-UP S", "FIRST ROW S", "ROWS/MIN"),
            (self.executor, str(len(self.results)), str(self.done), str(self.cached), str(len(self.failed)),
             f"{self.seconds:.1f}", f"{self.startup_s:.1f}", first, rate),
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "executor": self.executor, "seconds": round(self.seconds, 3), "startup_s": round(self.startup_s, 3),
            "first_row_s": None if self.first_row_s is None else round(self.first_row_s, 3),
            "done": self.done, "cached": self.cached, "failed": len(self.failed),
            "rows": [r.to_json() for r in self.results],
        }  # fmt: skip


# -- reading and checking a batch file --------------------------------------------------------
def executor_config(wb: Workbench, **overrides: Any) -> ExecutorConfig:
    """params.yaml's ``batch:`` section (all optional), then ``overrides`` (None keeps the value).

    Example:
        >>> executor_config(Workbench.open(), executor="ray").executor  # doctest: +SKIP
        'ray'
    """
    section = wb.params.get("batch") or {}
    if not isinstance(section, dict):
        raise ParamsError(
            f"params.yaml: batch must be a mapping (executor, workers, threads, ray), got {section!r:.60}."
        )
    ray = section.get("ray") or {}
    if not isinstance(ray, dict):
        raise ParamsError(
            f"params.yaml: batch.ray must be a mapping ({', '.join(RAY_KEYS)}), got {ray!r:.60}."
        )
    unknown = sorted(set(section) - {"executor", "workers", "threads", "ray"}) + sorted(
        f"ray.{k}" for k in set(ray) - set(RAY_KEYS)
    )
    if unknown:
        raise ParamsError(
            f"params.yaml: batch.{unknown[0]} is not a batch setting; allowed: executor, workers, threads, "
            + ", ".join(f"ray.{k}" for k in RAY_KEYS)
            + "."
        )
    values = {
        "executor": section.get("executor", "local"),
        "workers": section.get("workers", 2),
        "threads": section.get("threads", DEFAULT_THREADS),
        **{k: ray[k] for k in RAY_KEYS if k in ray},
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = ExecutorConfig(**values)
    _check_config(config)
    return config


def _check_config(c: ExecutorConfig) -> None:
    if c.executor not in EXECUTORS:
        raise ParamsError(f"batch.executor must be one of {', '.join(EXECUTORS)}, got {c.executor!r}.")
    for name in ("workers", "threads"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
            raise ParamsError(f"batch.{name} must be a whole number in [1, 1024], got {value!r}.")
    for name in ("cpus_per_actor", "gpus_per_actor"):
        value = getattr(c, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1024:
            raise ParamsError(f"batch.ray.{name} must be a number in [0, 1024], got {value!r}.")
    for name in ("max_restarts", "max_task_retries"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= 100:
            raise ParamsError(
                f"batch.ray.{name} must be a whole number in [-1, 100] (-1: no limit), got {value!r}."
            )
    if c.results not in RESULTS:
        raise ParamsError(
            f"batch.ray.results must be one of {', '.join(RESULTS)} (shared: a folder every worker sees; "
            f"driver: the files come back to this machine), got {c.results!r}."
        )


def load_batch(wb: Workbench, path: str | os.PathLike[str], threads: int | None = None) -> list[BatchRow]:
    """Read and check a batch file; every row is checked before anything runs.

    The file is a list of rows, or a mapping with any of ``defaults`` (keys every row takes
    unless it sets them), ``rows`` (a list) and ``product`` (``prompts`` x ``seeds`` x
    ``models``, plus keys every row of it takes). A row holds ``kind`` (default music),
    ``model`` (default: the kind's params.yaml model), ``prompt`` or ``prompts``, ``seed``
    (default: derived from the row, so a re-run is a cache hit), the kind's request fields
    (``duration_s``, ``guidance_scale``, ...) and settings (``format``, ``normalize_lufs``,
    ``device``, ``dtype``, ``threads``, ``precision``). Unset fields take the kind's defaults
    from params.yaml, as ``harmonia generate`` does.

    Args:
        wb: the workbench (its params.yaml gives the defaults and the models).
        path: the batch file.
        threads: torch threads per row when a row does not set them (default: params.yaml's
            ``batch.threads``, else 1). They are part of the artifact id.

    Returns:
        The rows, in file order (rows first, then the product).

    Example:
        >>> rows = load_batch(Workbench.open(), "sweep.yaml")  # doctest: +SKIP
        >>> rows[0].where, rows[0].model, rows[0].request["seed"]  # doctest: +SKIP
        ('product[prompt 1, seed 0, model tiny-musicgen]', 'tiny-musicgen', 0)
    """
    name = Path(path).name
    if not Path(path).is_file():
        raise RequestError(
            f"batch file {path} does not exist; give a YAML file of rows (see the README's Batches)."
        )
    data = load_yaml(Path(path), name, error=FileFormatError)
    threads = threads if threads is not None else executor_config(wb).threads
    entries: list[tuple[str, dict[str, Any]]] = []
    if isinstance(data, list):
        data = {"rows": data}
    if not isinstance(data, dict):
        raise RequestError(
            f"{name}: must be a list of rows or a mapping with rows/product/defaults, got {_a(data)}."
        )
    unknown = sorted(set(data) - {"rows", "product", "defaults"})
    if unknown:
        raise RequestError(f"{name}: '{unknown[0]}' is not a batch key; allowed: defaults, rows, product.")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RequestError(f"{name} defaults: must be a mapping of row keys, got {_a(defaults)}.")
    rows = data.get("rows") or []
    if not isinstance(rows, list):
        raise RequestError(f"{name} rows: must be a list of rows, got {_a(rows)}.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(
                f"{name} rows[{i}]: must be a mapping (kind, model, prompt, seed, ...), got {_a(row)}."
            )
        entries.append((f"rows[{i}]", {**defaults, **row}))
    if data.get("product") is not None:
        entries.extend(_product(name, data["product"], defaults))
    if not entries:
        raise RequestError(
            f"{name}: no rows; give 'rows' (a list) or a 'product' of prompts x seeds x models."
        )
    if len(entries) > MAX_ROWS:
        raise RequestError(f"{name}: {len(entries):,} rows, over the limit of {MAX_ROWS:,}; split the batch.")
    return [_row(wb, name, i, where, entry, threads) for i, (where, entry) in enumerate(entries)]


def _product(name: str, product: Any, defaults: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(product, dict):
        raise RequestError(
            f"{name} product: must be a mapping with prompts, seeds and models, got {_a(product)}."
        )
    lists = {}
    for key in PRODUCT_KEYS:
        value = product.get(key)
        if key == "models" and value is None:
            value = [defaults.get("model")]  # None: the kind's params.yaml model
        if not isinstance(value, list) or not value:
            raise RequestError(f"{name} product.{key}: must be a non-empty list, got {_a(value)}.")
        lists[key] = value
    shared = {**defaults, **{k: v for k, v in product.items() if k not in PRODUCT_KEYS}}
    entries = []
    for p, prompt in enumerate(lists["prompts"]):
        for seed in lists["seeds"]:
            for model in lists["models"]:
                named = f", model {model}" if model is not None else ""
                where = f"product[prompt {p}, seed {seed}{named}]"
                entries.append((where, {**shared, "prompt": prompt, "seed": seed, "model": model}))
    return entries


def _row(wb: Workbench, name: str, index: int, where: str, entry: dict[str, Any], threads: int) -> BatchRow:
    """One row checked: its kind, model, fields and limits (no model loaded, nothing read but params)."""
    from harmonia.defaults import kind_defaults
    from harmonia.engines import KINDS, request_type
    from harmonia.requests import check_limits

    at = f"{name} {where}"
    kind = entry.get("kind", "music")
    if kind not in KINDS:
        raise RequestError(
            f"{at}.kind: {kind!r} is not a kind Harmonia makes; known kinds: {', '.join(KINDS)}."
        )
    info = KINDS[kind]
    req_type = request_type(kind)
    req_fields = [f.name for f in fields(req_type)]
    allowed = sorted({*ROW_KEYS, *SETTING_KEYS, *req_fields})
    for key in entry:
        if key not in allowed:
            raise RequestError(f"{at}.{key} is not a field of a {kind} row; allowed: {', '.join(allowed)}.")
    defaults = kind_defaults(wb, kind)
    model, engine = entry.get("model"), entry.get("engine")
    if info.prompted:
        model = model or defaults.model
        if not isinstance(model, str) or not model:
            raise RequestError(
                f"{at}.model: none given and params.yaml has no {info.section}.model; name a model."
            )
        _check_model(wb, at, kind, model)
    else:
        engine = engine or _engine_of(kind)
    # what it is made from: 'prompt' (one) or 'prompts' (a list); a text row's idea ('prompt' or 'idea')
    first = req_fields[0] if info.prompted else None  # made from: prompts (media) or an idea (text)
    request = {k: v for k, v in entry.items() if k in req_fields and k not in (first, "seed")}
    given = [k for k in dict.fromkeys(("prompt", "prompts", first or "prompts")) if k in entry]
    if info.prompted:
        if len(given) != 1:
            raise RequestError(f"{at}: give 'prompt' (one) or 'prompts' (a list), exactly one of them.")
        value = entry[given[0]]
        prompts = value if isinstance(value, list) else [value]
        if (
            not prompts
            or not all(isinstance(p, str) and p.strip() for p in prompts)
            or (first == "idea" and len(prompts) != 1)
        ):
            raise RequestError(
                f"{at}.{given[0]} must be non-empty text (prompts: a list of it), got {value!r:.80}."
            )
        request[first] = prompts if first == "prompts" else prompts[0]
    elif given:
        raise RequestError(
            f"{at}: a {kind} row is made from an artifact, not from prompts; remove '{given[0]}'."
        )
    for key in getattr(req_type, "TEXT_INPUTS", ()):  # lyrics: the text itself; a file's name would be sung
        value = request.get(key)
        if isinstance(value, str) and re.fullmatch(r"\S+\.(txt|lrc|md|text)", value, flags=re.IGNORECASE):
            raise RequestError(
                f"{at}.{key}: {value!r} looks like a file name; a batch row takes the {key} text itself "
                "(a YAML block: |)."
            )
    for key, value in request.items():
        if not isinstance(value, str | int | float | bool | list | type(None)):
            raise RequestError(f"{at}.{key} must be a plain value (text, number, list), got {_a(value)}.")
    settings = defaults.run_settings() if info.prompted else {}
    settings.update({("fmt" if k == "format" else k): entry[k] for k in SETTING_KEYS if k in entry})
    if info.prompted and settings.get("threads") is None:
        settings["threads"] = threads  # fixed, so every executor makes the same id
    _check_settings(at, settings)
    # the seed: given, or derived from what the row asks (stable across runs and executors)
    seed = entry.get("seed")
    if seed is None and "seed" in req_fields:
        blob = json.dumps([kind, model, engine, request, settings], sort_keys=True, default=str)
        seed = int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "big") & 0x7FFFFFFF
    if "seed" in req_fields:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise RequestError(f"{at}.seed must be an integer in [0, 2**63), got {seed!r}.")
        request["seed"] = seed
    try:
        built = (
            defaults.request_for(request.pop(first), **request)
            if info.prompted
            else req_type(**{k: v for k, v in request.items()})
        )
        check_limits(built)
    except HarmoniaError as exc:
        raise type(exc)(f"{at}: {exc}") from None
    except TypeError as exc:
        raise RequestError(f"{at}: {exc}") from None
    plain = {f.name: _plain(getattr(built, f.name)) for f in fields(built)}
    return BatchRow(index, where, kind, model if info.prompted else None, engine, plain, settings)


def request_rows(
    kind: str, model: str, requests: list[Any], settings: dict[str, Any], threads: int = DEFAULT_THREADS
) -> list[BatchRow]:
    """Rows from requests already made and checked (the pipeline's): one row per request.

    ``settings`` are generate()'s keywords; unset threads become ``threads`` (fixed, so every
    executor makes the same id). A request without a seed gets one from its content.
    """
    from harmonia.requests import check_limits

    rows = []
    for i, request in enumerate(requests):
        check_limits(request)
        plain = {f.name: _plain(getattr(request, f.name)) for f in fields(request)}
        chosen = {**settings, "threads": settings.get("threads") or threads}
        if "seed" in plain and plain["seed"] is None:
            blob = json.dumps([kind, model, None, plain, chosen], sort_keys=True, default=str)
            plain["seed"] = int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "big") & 0x7FFFFFFF
        rows.append(BatchRow(i, f"generation {i}", kind, model, None, plain, chosen))
    return rows


def _check_settings(at: str, settings: dict[str, Any]) -> None:
    """Output and runtime settings that need no model: format, loudness target, threads."""
    from harmonia.engines.base import MAX_THREADS
    from harmonia.manifest import OutputSettings
    from harmonia.media import check_output

    try:
        if "fmt" in settings:
            check_output(OutputSettings(settings["fmt"], settings.get("normalize_lufs")))
        threads = settings.get("threads")
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS
        ):
            raise RequestError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}.")
        for key in ("device", "dtype", "precision"):
            if settings.get(key) is not None and not isinstance(settings[key], str):
                raise RequestError(f"{key} must be text (e.g. cpu, float32, exact), got {settings[key]!r}.")
    except HarmoniaError as exc:
        raise RequestError(f"{at}: {exc}") from None


def _check_model(wb: Workbench, at: str, kind: str, model: str) -> None:
    """The model exists in params.yaml and its engine makes this kind (no snapshot is opened)."""
    from harmonia.engines import engine_class

    if not isinstance(model, str):
        raise RequestError(f"{at}.model must be a model name, got {model!r}.")
    try:
        spec = wb.spec("model", model)
    except HarmoniaError as exc:
        raise RequestError(f"{at}.model: {exc}") from None
    if spec.engine is None:
        raise RequestError(f"{at}.model: '{model}' has no 'engine' in params.yaml; set it.")
    cls = engine_class(spec.engine)
    if cls.kind != kind:
        raise RequestError(f"{at}.model: '{model}' makes {cls.kind}, not {kind}; pick a {kind} model.")


def _engine_of(kind: str) -> str:
    from harmonia.engines import ENGINES, engine_class

    for name in ENGINES:
        cls = engine_class(name)
        if cls.kind == kind and not getattr(cls, "uses_model", True):
            return name
    raise RequestError(f"no engine makes {kind} without a model.")  # pragma: no cover


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _a(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


# -- running one row (in whichever process) ---------------------------------------------------
class _HeldByDriver(Exception):
    """Raised by the id hook when the driver's store already holds the row's artifact."""

    def __init__(self, artifact: str) -> None:
        super().__init__(artifact)
        self.artifact = artifact


def run_row(wb: Workbench, row: BatchRow, held: frozenset[str] = frozenset()) -> RowResult:
    """Run one row through the generation path; any error becomes the row's recorded message.

    Catching here, per row, is what keeps a failing row from dropping its batch-mates (Ray
    drops a whole batch, or aborts the dataset, when an exception escapes a worker). An id in
    ``held`` (the driver's store, results: driver) is a cache hit: nothing is generated.
    """
    from harmonia.engines import request_type
    from harmonia.generation import derive, generate

    def on_id(artifact: str) -> None:
        if artifact in held:
            raise _HeldByDriver(artifact)

    started = time.perf_counter()
    try:
        request = request_type(row.kind)(**row.request)
        if row.model is None:
            done = derive(wb, row.engine, request, on_id=on_id)
        else:
            done = generate(wb, row.model, request, **row.settings, on_id=on_id)
        return RowResult(row.index, row.where, done.artifact.id, done.cached, None,
                         time.perf_counter() - started, os.getpid())  # fmt: skip
    except _HeldByDriver as hit:
        return RowResult(row.index, row.where, hit.artifact, True, None,
                         time.perf_counter() - started, os.getpid())  # fmt: skip
    except Exception as exc:  # recorded, one row at a time
        message = str(exc) if isinstance(exc, HarmoniaError) else f"{type(exc).__name__}: {exc}"
        return RowResult(row.index, row.where, None, False, " ".join(message.split()),
                         time.perf_counter() - started, os.getpid())  # fmt: skip


_WORKER_WB: Workbench | None = None


def _pool_init(root: str) -> None:
    global _WORKER_WB
    _WORKER_WB = Workbench.open(root)


def _pool_row(data: dict[str, Any]) -> dict[str, Any]:
    assert _WORKER_WB is not None
    return run_row(_WORKER_WB, BatchRow.from_json(data)).to_json()


class RayRows:
    """Ray Data's callable class: built once per actor, it runs each row of its batches.

    Batches arrive as ``{"row": [json, ...]}`` (one column of JSON text, so rows of different
    kinds share one schema) and leave as ``{"result": [json, ...]}``; the engine loaded for
    the first row stays loaded for the next rows of the same model. ``ROOT`` is set on a
    subclass made per run (so no constructor argument has to live in Ray's object store,
    which an actor restart would need).
    """

    ROOT: str = ""
    RESULTS: str = "shared"  # driver: generate into a scratch store here, return the files
    HELD: frozenset[str] = frozenset()  # ids the driver's store holds intact (results: driver)

    def __init__(self) -> None:
        self.wb = Workbench.open(self.ROOT)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        out, files = [], []
        for r in batch["row"]:
            row = BatchRow.from_json(json.loads(str(r)))
            if self.RESULTS == "driver":
                result, sent = run_row_returning(self.wb, row, self.HELD)
            else:
                result, sent = run_row(self.wb, row), None
            out.append(json.dumps(result.to_json()))
            files.append(json.dumps(sent))
        return {"result": np.array(out, dtype=object), "files": np.array(files, dtype=object)}


@dataclass(frozen=True)
class _ScratchWorkbench(Workbench):
    """The node's workbench (its params and models) with the artifact store in a scratch folder."""

    scratch: Path = Path()

    @property
    def artifacts_dir(self) -> Path:
        return self.scratch


def scratch_root() -> Path:
    """Where actors keep their scratch stores: ``$HARMONIA_SCRATCH``, else TMPDIR/harmonia-scratch."""
    import tempfile

    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "harmonia-scratch")


def run_row_returning(
    wb: Workbench, row: BatchRow, held: frozenset[str] = frozenset(), limit: int = MAX_RESULT_BYTES
) -> tuple[RowResult, dict[str, dict[str, str]] | None]:
    """Run a row into a private scratch store and return its artifact's files (results: driver).

    Returns the result and ``{relative path: {"sha256", "data" (base64)}}`` of every file of
    the artifact, manifest.json included (None for a failed row or one the driver holds). The
    scratch folder is removed whatever happens. A row whose files pass ``limit`` bytes fails
    with a message naming the limit.
    """
    import base64
    import shutil
    import tempfile

    base = scratch_root()
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="row-", dir=base))
    try:
        scratch = _ScratchWorkbench(root=wb.root, params=wb.params, scratch=folder)
        result = run_row(scratch, row, held)
        if result.artifact is None or result.artifact in held:
            return result, None
        made = folder / result.artifact
        paths = sorted(p for p in made.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in paths)
        if size > limit:
            message = (
                f"the artifact's files are {size:,} bytes, over the limit of {limit:,} bytes a row may "
                "return to the driver (batch.ray.results: driver); use results: shared (a folder every "
                "worker sees) for outputs this large."
            )
            return RowResult(row.index, row.where, None, False, message, result.seconds, result.worker), None
        sent = {}
        for p in paths:
            data = p.read_bytes()
            sent[str(p.relative_to(made))] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "data": base64.b64encode(data).decode("ascii"),
            }
        return result, sent
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def install_files(wb: Workbench, artifact: str, sent: dict[str, dict[str, str]]) -> bool:
    """Install an artifact returned by an actor into ``wb``'s store, whole or not at all.

    Every file must match the sha256 sent with it and the one its manifest records, and the
    files must be exactly the manifest's (plus manifest.json). An intact artifact already
    there is kept. Returns True when it was installed; ArtifactError (nothing installed)
    when anything does not match.
    """
    import base64

    from harmonia.artifacts import MANIFEST_FILE, _parse, check_id, find_artifact, intact, safe_file
    from harmonia.atomic import discard, install, staging_dir
    from harmonia.errors import ArtifactError
    from harmonia.manifest import Manifest

    check_id(artifact)
    existing = find_artifact(wb, artifact)
    if existing is not None and intact(existing):
        return False
    if not isinstance(sent, dict) or MANIFEST_FILE not in sent:
        raise ArtifactError(
            f"artifact {artifact}: the worker returned no {MANIFEST_FILE}; nothing installed."
        )
    staging = staging_dir(wb.artifacts_dir, artifact)
    try:
        for rel, item in sent.items():
            path = safe_file(staging, rel)
            try:
                data = base64.b64decode(item["data"], validate=True)
                digest = item["sha256"]
            except (KeyError, TypeError, ValueError):
                raise ArtifactError(
                    f"artifact {artifact}: {rel} came back without its bytes and sha256; nothing installed."
                ) from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise ArtifactError(
                    f"artifact {artifact}: {rel} arrived with a different sha256 than the worker sent; "
                    "nothing installed."
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            data = json.loads((staging / MANIFEST_FILE).read_text("utf-8"))
        except ValueError:
            raise ArtifactError(
                f"artifact {artifact}: its {MANIFEST_FILE} is not JSON; nothing installed."
            ) from None
        manifest = Manifest.from_json(data, f"artifact {artifact}'s {MANIFEST_FILE}")
        if manifest.id != artifact:
            raise ArtifactError(
                f"artifact {artifact}: its manifest names {manifest.id!r}; nothing installed."
            )
        if set(sent) != {*manifest.files, MANIFEST_FILE}:
            raise ArtifactError(
                f"artifact {artifact}: the files returned are not the ones its manifest lists; nothing installed."
            )
        for rel, digest in manifest.files.items():
            if sent[rel]["sha256"] != digest:
                raise ArtifactError(
                    f"artifact {artifact}: {rel} does not match the sha256 its manifest records; nothing installed."
                )
        install(staging, wb.artifacts_dir / artifact)
    finally:
        discard(staging)
    _parse(wb.artifacts_dir / artifact)
    return True


# -- executors --------------------------------------------------------------------------------
OnRow = Callable[[RowResult], None]


def run_batch(
    wb: Workbench,
    rows: list[BatchRow],
    config: ExecutorConfig | None = None,
    on_row: OnRow | None = None,
) -> BatchReport:
    """Run every row; returns one result per row (artifact or error), in row order.

    Args:
        wb: the workbench; its artifacts/ must be a folder every worker sees.
        rows: from :func:`load_batch`.
        config: the executor and its settings (default: params.yaml's ``batch:``).
        on_row: called in this process with each row's result as it arrives (a progress bar).

    Example:
        >>> report = run_batch(wb, load_batch(wb, "sweep.yaml"))  # doctest: +SKIP
        >>> report.done, report.cached, len(report.failed)  # doctest: +SKIP
        (12, 0, 0)
    """
    config = config or executor_config(wb)
    started = time.perf_counter()
    run = _run_ray if config.executor == "ray" else _run_local
    first: list[float] = []

    def arrived(result: RowResult) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        if on_row is not None:
            on_row(result)

    results, startup_s, notes = run(wb, rows, config, arrived)
    by_index = {r.index: r for r in results}
    missing = [r for r in rows if r.index not in by_index]
    why = next((n for n in notes if n.startswith("ray stopped")), "the worker was lost")
    for row in missing:  # never silently lost: a row the executor did not answer is a failure
        by_index[row.index] = RowResult(row.index, row.where, None, False,
                                        f"no result came back from the executor ({why})", 0.0)  # fmt: skip
    ordered = tuple(by_index[r.index] for r in rows)
    seconds = time.perf_counter() - started
    return BatchReport(
        config.executor, ordered, seconds, startup_s, first[0] if first else None, tuple(notes)
    )


def _order(rows: list[BatchRow]) -> list[BatchRow]:
    """Rows grouped by model (then file order): a worker takes consecutive rows, loading each model once."""
    return sorted(rows, key=lambda r: (r.model or "", r.engine or "", r.index))


def _run_local(wb: Workbench, rows: list[BatchRow], config: ExecutorConfig, on_row: OnRow):
    """A spawn-started process pool; a pool broken by a dead worker is replaced and its rows run again."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    results: list[RowResult] = []
    pending = _order(rows)
    startup_s, notes, attempt = 0.0, [], 0
    while pending:
        attempt += 1
        t0 = time.perf_counter()
        pool = ProcessPoolExecutor(
            max_workers=min(config.workers, len(pending)),
            mp_context=multiprocessing.get_context("spawn"),  # no forked torch state
            initializer=_pool_init,
            initargs=(str(wb.root),),
        )
        startup_s += time.perf_counter() - t0
        lost: list[BatchRow] = []
        with pool:
            futures = {pool.submit(_pool_row, row.to_json()): row for row in pending}
            for future in as_completed(futures):
                row = futures[future]
                try:
                    result = RowResult(**future.result())
                except BrokenProcessPool:
                    lost.append(row)
                    continue
                results.append(result)
                on_row(result)
        if lost:
            notes.append(f"a worker died; {len(lost)} row(s) run again on a fresh pool")
            if attempt > (config.max_task_retries if config.max_task_retries >= 0 else 10):
                for row in lost:
                    result = RowResult(row.index, row.where, None, False,
                                       f"the worker running it died {attempt} times", 0.0)  # fmt: skip
                    results.append(result)
                    on_row(result)
                break
        pending = _order(lost)
    return results, startup_s, notes


def fit_actors(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs the nodes' resources hold at once.

    Example:
        >>> fit_actors([{"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}], cpus=2, gpus=0)
        6
        >>> fit_actors([{"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}], cpus=2, gpus=1)
        1
    """
    total = 0
    for res in nodes:
        counts = [res.get("CPU", 0.0) // cpus if cpus else float("inf"),
                  res.get("GPU", 0.0) // gpus if gpus else float("inf")]  # fmt: skip
        fit = min(counts)
        total += 0 if fit == float("inf") else int(fit)
    return total


def check_cluster(nodes: list[dict[str, float]], config: ExecutorConfig, where: str) -> int:
    """The number of actors to start; ClusterError when no node can hold even one.

    Ray queues an actor that asks for more than any node has (a GPU on a CPU-only cluster)
    forever, so this is checked before anything starts.
    """
    actors = fit_actors(nodes, config.cpus_per_actor, config.gpus_per_actor)
    if actors == 0:
        seen = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes) or "no nodes"
        raise ClusterError(
            f"ray: no node of the cluster at {where} has {config.cpus_per_actor:g} CPU and "
            f"{config.gpus_per_actor:g} GPU for one actor (nodes: {seen}). Lower batch.ray.cpus_per_actor / "
            "gpus_per_actor in params.yaml, or add a node that has them (ray start --address ...)."
        )
    return min(actors, config.workers)


def _run_ray(wb: Workbench, rows: list[BatchRow], config: ExecutorConfig, on_row: OnRow):
    """Ray Data: an actor pool over the rows, one row per task, results streamed back as they finish."""
    try:
        import ray
        from ray.data import ActorPoolStrategy
    except ImportError:
        raise ClusterError(
            "the ray executor needs Ray: pip install 'harmonia[ray]' (ray[data] 2.x), or use --executor local."
        ) from None
    t0 = time.perf_counter()
    address = os.environ.get("RAY_ADDRESS") or None
    owned = not ray.is_initialized()
    if owned:
        here = str(Path(__file__).resolve().parents[1])  # so actors import this harmonia (a source checkout)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        env_vars = {"PYTHONPATH": path, "HARMONIA_ROOT": str(wb.root)}
        if os.environ.get(SCRATCH_ENV):
            env_vars[SCRATCH_ENV] = os.environ[SCRATCH_ENV]
        ray.init(
            address=address,
            num_cpus=None if address else max(1, int(config.workers * max(config.cpus_per_actor, 1))),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            runtime_env={"env_vars": env_vars},
        )
    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        actors = check_cluster(nodes, config, address or "a local cluster started for this run")
        startup_s = time.perf_counter() - t0
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # Harmonia draws its own, one tick per row
        context.enable_operator_progress_bars = False
        ordered = _order(rows)
        items = [{"row": json.dumps(r.to_json())} for r in ordered]
        ds = ray.data.from_items(items, override_num_blocks=len(items))  # one row per task: retried alone
        held: frozenset[str] = frozenset()
        if config.results == "driver":  # what the driver's store holds is a cache hit, not generated again
            from harmonia.artifacts import intact, list_artifacts

            held = frozenset(a.id for a in list_artifacts(wb) if intact(a))
        attrs = {"ROOT": str(wb.root), "RESULTS": config.results, "HELD": held, "__module__": __name__}
        runner = type("HarmoniaRows", (RayRows,), attrs)
        with warnings.catch_warnings():  # Ray 2.60 takes actor restarts only as ray_remote_args
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                runner,
                batch_size=1,
                compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                num_cpus=config.cpus_per_actor,
                num_gpus=config.gpus_per_actor,
                max_restarts=config.max_restarts,
                max_task_retries=config.max_task_retries,
            )
        results = []
        notes = [f"{actors} actor(s) of {config.cpus_per_actor:g} CPU, {config.gpus_per_actor:g} GPU"]
        if config.results == "driver":
            notes.append("results: driver (each artifact's files checked and installed here)")
        try:
            for item in ds.iter_rows():
                result = RowResult(**json.loads(item["result"]))
                sent = json.loads(item["files"])
                if config.results == "driver" and result.artifact is not None and sent is not None:
                    try:
                        install_files(wb, result.artifact, sent)
                    except HarmoniaError as exc:
                        result = RowResult(result.index, result.where, None, False, " ".join(str(exc).split()),
                                           result.seconds, result.worker)  # fmt: skip
                results.append(result)
                on_row(result)
        except Exception as exc:  # the dataset gave up (retries spent): the rows that came back count
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            notes.append(f"ray stopped the batch: {reason}")
        return results, startup_s, notes
    finally:
        if owned:
            ray.shutdown()


__all__ = [
    "EXECUTORS", "RESULTS", "BatchReport", "BatchRow", "ExecutorConfig", "RowResult", "check_cluster",
    "executor_config", "fit_actors", "install_files", "load_batch", "request_rows", "run_batch", "run_row",
    "run_row_returning", "scratch_root",
]  # fmt: skip

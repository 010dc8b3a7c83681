"""The ``harmonia`` command line: a thin layer over the package's functions.

Every command calls the same function a notebook or a pipeline stage would; this module
only parses arguments, draws progress bars and prints. Errors Harmonia raises on purpose
are printed as one ``error:`` line (exit code 2); a failed verification exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence

from tqdm import tqdm

from harmonia import __version__
from harmonia.errors import HarmoniaError
from harmonia.workbench import KINDS, Kind, Workbench, plural

EXIT_FAILED = 1
EXIT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        harmonia 0.1.0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.run(args) or 0
    except HarmoniaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonia",
        description="Local, reproducible generation of music: snapshots, engines, artifacts.",
    )
    parser.add_argument("--version", action="version", version=f"harmonia {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for kind in KINDS:
        _add_snapshot_commands(commands, kind)
    return parser


def _add_snapshot_commands(commands, kind: Kind) -> None:
    group = commands.add_parser(plural(kind), help=f"fetch, verify, list {plural(kind)}")
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = sub.add_parser("fetch", help=f"download a {kind} declared in params.yaml at a pinned commit")
    p.add_argument("name", help=f"a {kind} name from params.yaml")
    p.add_argument("--revision", help="a branch, tag or commit overriding params.yaml")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also download pickled weights (*.bin, *.pt, *.ckpt, *.pth)",
    )
    p.set_defaults(run=_fetch, kind=kind)

    p = sub.add_parser("verify", help=f"check {plural(kind)} against their inventories")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: every present snapshot")
    p.add_argument("--full", action="store_true", help="re-hash every file, not only changed ones")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(run=_verify, kind=kind)

    p = sub.add_parser("list", help=f"declared and present {plural(kind)}")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(run=_list, kind=kind)

    if kind == "model":
        p = sub.add_parser("tiny", help="build a tiny random model of an engine's architecture")
        p.add_argument("builder", metavar="ENGINE", help="musicgen or musicgen-melody")
        p.add_argument("--name", help="snapshot name (default: tiny-ENGINE)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
        p.set_defaults(run=_tiny, kind=kind)


class _Bar:
    """A bytes progress bar on stderr, created on first use and safe to update from threads."""

    def __init__(self, desc: str):
        self.desc, self.bar, self.lock = desc, None, threading.Lock()

    def __call__(self, n: int, total: int) -> None:
        with self.lock:
            if self.bar is None:
                self.bar = tqdm(
                    total=total, unit="B", unit_scale=True, desc=self.desc, leave=False, disable=None
                )
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fetch(args) -> int:
    from harmonia.hub import fetch

    wb = Workbench.open()
    bar = _Bar("checking")
    try:
        result = fetch(
            wb,
            args.kind,
            args.name,
            revision=args.revision,
            allow_pickle=args.allow_pickle,
            progress=bar,
        )
    finally:
        bar.close()
    inv, src = result.inventory, result.inventory.source
    verb = "already present" if result.reused else "fetched"
    print(
        f"{verb}: {args.kind} {result.name} = {src.repo}@{src.revision} "
        f"({len(inv.files)} files, {_size(inv.total_size)}) in {_rel(wb, result.path)}"
    )
    return 0


def _verify(args) -> int:
    from harmonia.snapshots import list_snapshots, verify

    wb = Workbench.open()
    names = args.names or [s.name for s in list_snapshots(wb, args.kind) if s.present]
    reports = []
    for name in names:
        wb.snapshot_dir(args.kind, name)  # rejects names that are not plain folder names
        bar = _Bar(f"verifying {name}")
        try:
            reports.append(verify(wb, args.kind, name, full=args.full, progress=bar))
        finally:
            bar.close()
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        for report in reports:
            print(report.summary())
            for p in report.problems:
                print(f"  {p.kind:9} {p.path}: {p.detail}")
        if not reports:
            print(f"no {plural(args.kind)} present in {_rel(wb, wb.kind_dir(args.kind))}")
    return 0 if all(r.ok for r in reports) else EXIT_FAILED


def _list(args) -> int:
    from harmonia.snapshots import list_snapshots

    wb = Workbench.open()
    rows = list_snapshots(wb, args.kind)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    table = [("NAME", "SOURCE", "REVISION", "SIZE", "LICENSE", "VERIFIED")]
    for r in rows:
        verified = r.verified + (f" {r.verified_at}" if r.verified_at else "")
        revision = (r.revision or "-")[:12]
        size = _size(r.size) if r.size is not None else "-"
        table.append((r.name, r.source, revision, size, r.license or "-", verified))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _tiny(args) -> int:
    from harmonia.tiny import build_tiny

    wb = Workbench.open()
    built = build_tiny(wb, args.builder, name=args.name, seed=args.seed)
    inv = built.inventory
    print(
        f"built: model {built.name} = tiny {args.builder}, seed {args.seed} "
        f"({len(inv.files)} files, {_size(inv.total_size)}, digest {inv.digest[:12]}) "
        f"in {_rel(wb, built.path)}"
    )
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _rel(wb: Workbench, path) -> str:
    try:
        return f"{path.relative_to(wb.root)}/"
    except ValueError:
        return str(path)


def main_exit() -> None:
    """Entry point of the ``harmonia`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()

"""The `zeroth` command line: `zeroth validate MANIFEST...`, `zeroth run MANIFEST`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from zeroth import validation

console = Console(stderr=True)


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.manifests:
        try:
            run = validation.load(path)
        except validation.ManifestError as e:
            failed += 1
            console.print(f"[red]✗[/] {e}", markup=True, highlight=False)
        except OSError as e:
            failed += 1
            console.print(f"[red]✗[/] {path}: {e.strerror}", highlight=False)
        else:
            console.print(f"[green]✓[/] {path}: ReasoningRun {run.metadata.name} is valid", highlight=False)
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from zeroth import local

    if (args.manifest is None) == (args.resume is None):
        console.print("[red]give a MANIFEST or --resume RUN_DIR[/]")
        return 2
    try:
        return local.run(args.manifest, args.resume, args.runs, args.metrics_port, console)
    except validation.ManifestError as e:
        console.print(f"[red]✗[/] {e}", highlight=False)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zeroth", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check manifests with the same rules as the API server")
    v.add_argument("manifests", nargs="+", metavar="MANIFEST")
    v.set_defaults(func=_validate)
    r = sub.add_parser("run", help="run a ReasoningRun on this machine")
    r.add_argument("manifest", metavar="MANIFEST", nargs="?", type=Path)
    r.add_argument("--resume", metavar="RUN_DIR", type=Path, help="continue a stopped run from its last checkpoint")
    r.add_argument("--runs", type=Path, default=Path("runs"), help="where new run directories go (default: ./runs)")
    r.add_argument("--metrics-port", type=int, default=9400, help="Prometheus /metrics on 127.0.0.1 (0: any free port)")
    r.set_defaults(func=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

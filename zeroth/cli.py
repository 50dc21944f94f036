"""The `zeroth` command line: `zeroth validate MANIFEST...`, `zeroth run MANIFEST`."""

from __future__ import annotations

import argparse
import sys

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
    try:
        validation.load(args.manifest)
    except validation.ManifestError as e:
        console.print(f"[red]✗[/] {e}", highlight=False)
        return 2
    console.print("[yellow]The local RL engine is not built yet (issue 4): the manifest is valid, nothing was trained.[/]")
    return 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zeroth", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check manifests with the same rules as the API server")
    v.add_argument("manifests", nargs="+", metavar="MANIFEST")
    v.set_defaults(func=_validate)
    r = sub.add_parser("run", help="run a ReasoningRun on this machine")
    r.add_argument("manifest", metavar="MANIFEST")
    r.set_defaults(func=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `zeroth` command line: `zeroth validate MANIFEST...`, `zeroth run MANIFEST`, `zeroth eval RUN_DIR`."""

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


def _eval(args: argparse.Namespace) -> int:
    import json
    import subprocess

    cmd = [sys.executable, "-m", "zeroth.trainer.evaluate", str(args.run_dir)]
    cmd += [f"--k={args.k}"] if args.k else []
    cmd += [f"--limit={args.limit}"] if args.limit else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(proc.stderr[-3000:], highlight=False)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    k = result["k"]
    console.print(f"{args.run_dir}: {result['prompts']} held-out prompts: greedy {result['greedy']:.3f}  "
                  f"pass@{k} {result[f'pass@{k}']:.3f}  maj@{k} {result[f'maj@{k}']:.3f}", highlight=False)
    print(proc.stdout.strip().splitlines()[-1])
    return 0


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
    e = sub.add_parser("eval", help="held-out greedy accuracy, pass@k and maj@k of a finished run")
    e.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    e.add_argument("--k", type=int, default=None)
    e.add_argument("--limit", type=int, default=None)
    e.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

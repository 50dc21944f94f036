"""`python -m zeroth.trainer.build_model MANIFEST`: builds a run's `builtin:` model into the cache,
with a progress bar: for `zeroth run`, and for `make test` as a set-up step.

Its first line on stdout says the trainer may start: `building` once it holds the cache's lock (the
trainer ranks then wait on that lock, with no timeout, never at a collective), or the model's
folder when there is nothing to build. The folder is always the last line.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from zeroth import validation
    from zeroth.trainer import models

    run = validation.load(argv[1])  # YAML or JSON
    print(models.resolve(run.spec.model, building=lambda: print("building", flush=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

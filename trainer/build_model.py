"""`python -m zeroth.trainer.build_model RUN_JSON`: builds a `builtin:` model into the cache, with a
progress bar, before the trainer starts (`zeroth run` calls it in the foreground)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from zeroth import validation
    from zeroth.trainer import models

    run = validation.validate(json.loads(Path(argv[1]).read_text()), source=argv[1])
    print(models.resolve(run.spec.model))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Prints, one per line, the umoci-config arguments that give an image the configuration the
Dockerfile's last stage declares (ENV, USER, WORKDIR, ENTRYPOINT, CMD), so that hack/build-image.sh
and `docker build` agree from one source. Only the forms the Dockerfile uses: `ENV K=V` (one pair a
line), `USER`, `WORKDIR`, and exec-form (JSON) `ENTRYPOINT` and `CMD`.

    python3 hack/image/dockerfile_config.py Dockerfile
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def config(dockerfile: str) -> dict:
    """{"env": [...], "user", "workingdir", "entrypoint": [...], "cmd": [...]} of the last stage."""
    lines = dockerfile.replace("\\\n", " ").splitlines()
    out: dict = {"env": []}
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            out = {"env": []}
        elif word == "ENV":
            if "=" not in rest or " " in rest:
                raise SystemExit(f"dockerfile_config: write one ENV K=V a line: {line!r}")
            out["env"].append(rest)
        elif word == "USER":
            out["user"] = rest
        elif word == "WORKDIR":
            out["workingdir"] = rest
        elif word in ("ENTRYPOINT", "CMD"):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None
            if not isinstance(value, list):
                raise SystemExit(f"dockerfile_config: use the exec (JSON) form: {line!r}")
            out["entrypoint" if word == "ENTRYPOINT" else "cmd"] = value
    return out


def umoci_args(cfg: dict) -> list[str]:
    args = [f"--config.env={e}" for e in cfg["env"]]
    args += [f"--config.{k}={cfg[k]}" for k in ("user", "workingdir") if k in cfg]
    for k in ("entrypoint", "cmd"):
        args += [f"--config.{k}={v}" for v in cfg.get(k, [])]
    return args


if __name__ == "__main__":
    print("\n".join(umoci_args(config(Path(sys.argv[1]).read_text()))))

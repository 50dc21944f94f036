"""`zeroth validate` prints the offending field and exits non-zero; good manifests pass."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.bad_manifests import CASES
from tests.conftest import EXAMPLES


def zeroth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zeroth", *args], capture_output=True, text=True, timeout=60)


def test_validate_examples():
    proc = zeroth("validate", *map(str, EXAMPLES))
    assert proc.returncode == 0, proc.stderr


def test_validate_names_the_field(tmp_path):
    case = next(c for c in CASES if c.id == "clipHigh below clipLow")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(case.manifest()))
    proc = zeroth("validate", str(path))
    assert proc.returncode == 1
    assert case.path in proc.stderr


def test_missing_file(tmp_path):
    proc = zeroth("validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1 and "nope.yaml" in proc.stderr

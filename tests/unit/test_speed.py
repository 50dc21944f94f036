"""The suite's time limits scale with the machine-speed factor (tests/speed.py)."""

from __future__ import annotations

import pytest

from tests import speed


def test_a_given_factor_scales_every_limit_and_is_never_below_one(monkeypatch):
    monkeypatch.setenv(speed.FACTOR_VAR, "3")
    assert speed.measure() == (3.0, f"from {speed.FACTOR_VAR}")
    assert speed.scaled(600) == 1800
    monkeypatch.setenv(speed.FACTOR_VAR, "0.5")  # a faster machine keeps the reference limits
    assert speed.measure()[0] == 1.0 and speed.scaled(600) == 600


def test_a_bad_factor_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(speed.FACTOR_VAR, "fast")
    with pytest.raises(SystemExit, match=f"{speed.FACTOR_VAR}='fast' is not a number"):
        speed.measure()


def test_the_measured_factor_is_exported_for_child_processes(monkeypatch):
    monkeypatch.delenv(speed.FACTOR_VAR, raising=False)
    monkeypatch.setattr(speed, "calibrate", lambda: 4 * speed.REFERENCE_SECONDS)  # a 4x slower machine
    value, source = speed.measure()
    assert value == pytest.approx(4.0) and "measured" in source
    assert speed.factor() == pytest.approx(4.0)  # what hack/cluster.py reads from the environment

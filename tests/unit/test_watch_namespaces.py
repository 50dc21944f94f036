"""The namespaces a namespace-scoped operator serves, as ZEROTH_WATCH_NAMESPACES gives them."""

from __future__ import annotations

import pytest

from zeroth import api
from zeroth.operator import handlers


@pytest.mark.parametrize("value", [None, "", " , "])
def test_unset_or_empty_means_every_namespace(value):
    assert handlers.watch_namespaces(value) == ()


def test_names_are_split_trimmed_and_kept_once_in_order():
    assert handlers.watch_namespaces(" team-b,team-a ,team-b") == ("team-b", "team-a")


@pytest.mark.parametrize("value", ["Team-A", "team_a", "team-a,*", "-a", "a" * 64, "!kube-system"])
def test_anything_but_namespace_names_stops_the_operator_naming_the_variable(value):
    with pytest.raises(SystemExit, match=api.WATCH_NAMESPACES_VAR):
        handlers.watch_namespaces(value)

"""Each bad manifest is rejected by `kubectl apply` against the real API server, naming the field,
and by the local validator naming the same field."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.bad_manifests import CASES, Case
from tests.conftest import Cluster
from zeroth import validation

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kubectl_apply_rejects_naming_the_field(crd: Cluster, namespace: str, case: Case):
    manifest = case.manifest()
    proc = crd.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert proc.returncode != 0, f"the API server accepted it: {proc.stdout}"
    # the path must appear as a whole path, not as a prefix of a longer one
    assert re.search(re.escape(case.path) + r'(?=[:"\s]|$)', proc.stderr), proc.stderr
    assert crd.kubectl("get", "rr", "-n", namespace, "-o", "name").stdout == ""
    # and the local validator names the same field
    with pytest.raises(validation.ManifestError) as err:
        validation.validate(manifest)
    assert case.path in [e.path for e in err.value.errors]

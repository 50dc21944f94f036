"""The operator as it was before its pod watch carried a label selector, for bench/operator_memory.py
(`kopf run -m zeroth.operator.handlers bench/client_side_pod_filter.py`): it imports the handlers
first, so its startup handler runs after the operator's and takes the selector away again, so kopf lists and
streams every pod it may see and the handler's `labels` filter drops the others client-side."""

from typing import Any

import kopf

from zeroth.operator import handlers  # noqa: F401 - imported first, so its startup handler runs before ours


@kopf.on.startup()
def _without_the_pod_selector(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.label_selectors.clear()

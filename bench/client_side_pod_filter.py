"""The operator as it was before its pod watch carried a label selector, for bench/operator_memory.py:
loaded after zeroth.operator.handlers (`kopf run -m zeroth.operator.handlers bench/client_side_pod_filter.py`),
its startup handler runs after the operator's and takes the selector away again, so kopf lists and
streams every pod it may see and the handler's `labels` filter drops the others client-side."""

from typing import Any

import kopf


@kopf.on.startup()
def _without_the_pod_selector(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.label_selectors.clear()

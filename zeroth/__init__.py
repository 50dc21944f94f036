"""Zeroth: reinforcement learning of reasoning models from verifier rewards, on Kubernetes."""

__version__ = "0.1.0"
"""The one version of Zeroth: the package's (pyproject reads it), the image tag (`make image`, the
API's default image) and the chart's appVersion (a test checks Chart.yaml agrees)."""

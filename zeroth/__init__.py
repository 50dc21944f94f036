"""Zeroth: reinforcement learning of reasoning models from verifier rewards, on Kubernetes."""

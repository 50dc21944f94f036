"""The Kubernetes operator: thin kopf handlers over pure builders. Never imports torch, ray or deepspeed."""

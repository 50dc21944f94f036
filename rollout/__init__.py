"""Ray rollout workers, generation backends and verifiers."""

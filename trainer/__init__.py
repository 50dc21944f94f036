"""The DeepSpeed GRPO trainer."""

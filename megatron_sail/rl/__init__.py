"""Reinforcement learning with verifiable rewards: policy losses, group-relative advantages,
rewards, the RL config, a tiny verifiable task and pass@k filtering. Every piece here is pure
(no generation, no process groups) so the RL loop can compose them and tests can plant values."""

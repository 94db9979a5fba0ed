"""Reinforcement learning with verifiable rewards. Pure pieces (policy losses, group-relative
advantages, rewards, the RL config's checks, rollout packing, metrics, the tiny counting task,
pass@k filtering) that tests can plant values into, and the loop that composes them with
generation and Megatron's schedules (``loop.py``, run by ``worker.py`` / ``sail rl``)."""

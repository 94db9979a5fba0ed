"""Mechanisms every layer shares (atomic outputs, process control); imports nothing of
megatron_sail but ``errors``, so any package may use them."""

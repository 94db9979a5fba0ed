"""Scaling studies: FLOPs/MFU accounting, memory planning, sweeps, power-law fits and plots.

Everything here except ``measure`` is pure arithmetic on the config and imports neither torch
nor Megatron, so ``sail flops`` / ``sail plan`` / ``sail scaling fit`` start instantly.
"""

"""What a model costs, from its config alone: shapes, FLOPs per sample and step, device peaks.

Pure arithmetic (no torch, no processes) below both the training loop, which logs throughput
and MFU from it, and ``scaling/``, which plans and fits runs with it.
"""

"""Checkpoint conversion between the SAIL-VL2 Hugging Face release layout and megatron_sail's
Megatron distributed checkpoints.

kinds      mapping kinds (direct, QKV, gated MLP, per-expert, padded vocabulary, tied, ...)
tables     one declarative table per model family, built from the kinds
hf_config  release / AIMv2 / Qwen3 / Qwen3-MoE ``config.json`` <-> model architecture
safetensors_io, dcp_reader   lazy, bounded-memory readers and a streaming writer
importer, exporter, verify, forward   the ``sail convert`` / ``sail forward`` commands
megatron_side, worker, procs          the part that runs inside Megatron rank processes
"""

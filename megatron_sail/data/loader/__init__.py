"""Encoded samples -> this rank's micro-batches: the multimodal loader (planning, decoding
workers, checkpointable state), micro-batch collation and building a loader from a config."""

"""Data curation (``sail curate``): SAIL-VL2's scoring and filtering pipeline - media and text
filters, dedup, model or Python judges, rebalancing, caption-to-QA synthesis - as a resumable,
sharded run over JSONL files or prepared shard directories."""

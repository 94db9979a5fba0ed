"""Where samples come from: the record format (JSONL lines), prepared shard directories, the
blend of datasets, and the built-in shapes generator."""

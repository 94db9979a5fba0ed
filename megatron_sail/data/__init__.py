"""The data pipeline, by stage: ``records`` (JSONL, shards, blends, the shapes generator),
``media`` (decode and tile images and video), ``encoding`` (tokenizers and chat templates),
``packing`` (plan, deal and collate packed rows), ``loader`` (the one loader the trainer reads),
and the ``sail data`` commands (``check``, ``cli``)."""

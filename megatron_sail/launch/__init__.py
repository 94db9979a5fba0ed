"""SLURM launching: batch-script rendering from ``slurm/``, submission, sweeps as array jobs,
and the status of submitted runs. Used by ``sail slurm``; nothing here imports torch."""

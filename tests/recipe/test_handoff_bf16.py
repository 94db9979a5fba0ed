"""A stage hand-off in bf16: the optimizer keeps fp32 copies of the weights, which must take the
weights `checkpoint.load` (and `checkpoint.reinit`) put into the model - else the first step
writes the random initialisation back. One step at lr 0 keeps every weight where the hand-off
put it, so the saved weights show what the optimizer held."""

from __future__ import annotations

import torch

from megatron_sail.convert.dcp_reader import DistCheckpointReader
from megatron_sail.models.init import initial_value
from tests.helpers import SailRunner

ONE_STEP_AT_LR_0 = ["train.train_iters=1", "train.global_batch_size=4", "optimizer.lr=0",
                    "optimizer.min_lr=0", "optimizer.lr_warmup_iters=0",
                    "train.eval_interval=null", "run.tensorboard=false"]


def _model(run_dir) -> dict[str, torch.Tensor]:
    reader = DistCheckpointReader(next((run_dir / "checkpoints").glob("iter_*")))
    keys = reader.model_keys()
    return dict(zip(keys, reader.read([(k, None) for k in keys])))


def test_bf16_stage_starts_from_the_loaded_weights_with_a_fresh_adapter(tmp_path):
    sail = SailRunner()
    source = tmp_path / "source"
    sail.train(source, "train.train_iters=2", "train.global_batch_size=4",
               "train.eval_interval=null", "run.tensorboard=false", nproc=2)
    stage = tmp_path / "stage"
    sail.train(stage, *ONE_STEP_AT_LR_0, "train.precision=bf16",
               f"checkpoint.load={source / 'checkpoints'}", "checkpoint.reinit=[adapter]",
               nproc=2)
    loaded, saved = _model(source), _model(stage)
    assert saved.keys() == loaded.keys()
    for key, tensor in saved.items():
        assert tensor.dtype == torch.bfloat16
        if key.startswith("adapter."):  # the seed's draw, as a fresh run of seed 1234 makes it
            fresh = initial_value(key, tuple(tensor.shape), 1234, (), 0.02, {})
            assert torch.equal(tensor, fresh.to(torch.bfloat16)), key
            if tensor.dim() > 1:  # (two steps barely move norms and biases off 1 and 0)
                assert not torch.equal(tensor, loaded[key].to(torch.bfloat16)), key
        else:
            assert torch.equal(tensor, loaded[key].to(torch.bfloat16)), key

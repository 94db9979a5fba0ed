"""The quickstart really learns from the images: after training, the validation loss with
every image swapped for another sample's is clearly worse than with the right images."""

from __future__ import annotations


def test_tiny_model_learns_to_read_images(sail, tmp_path):
    sail.train(tmp_path, "train.train_iters=150", "train.eval_interval=150",
               "checkpoint.save_interval=null", nproc=2)
    records = sail.metrics(tmp_path)
    first, last = records[0], records[-1]
    assert last["iteration"] == 150
    assert last["loss"] < first["loss"] / 5
    assert last["val_loss_mismatched_images"] > last["val_loss"] + 0.05, last
    assert (tmp_path / "loss.png").stat().st_size > 10_000  # the plot written at the end
    tb = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb[0].parent))
    acc.Reload()
    assert {"loss", "lr", "grad_norm", "val_loss"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("loss")) == 150

"""Config loading (YAML + overrides, presets) and start-up layout validation."""

from __future__ import annotations

import textwrap

import pytest

from megatron_sail.config import (
    ConfigError, SailConfig, config_from_dict, config_to_dict, load_config, save_config,
)
from megatron_sail.config.validation import resolve_layout
from megatron_sail.config.presets import PRESETS


def _write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---- load_config ---------------------------------------------------------------------------

def test_yaml_and_overrides_with_type_coercion(tmp_path):
    path = _write(tmp_path, """
        model:
          preset: tiny
        train:
          train_iters: 12
          micro_batch_size: 2
        optimizer:
          lr: 1e-3          # YAML reads this as a string; the loader makes it a float
          weight_decay: 0   # int in YAML, float field
        checkpoint:
          keep_last: 3
    """)
    cfg = load_config(path, [
        "train.global_batch_size=16",
        "optimizer.min_lr=2.5e-5",
        "run.tensorboard=false",
        "parallel.sequence_parallel=true",
        "model.freeze=vision,adapter",
        "checkpoint.keep_last=null",
        "train.exit_interval=7",
        "data.tokenizer=/tmp/x.model",
    ])
    assert cfg.train.train_iters == 12 and type(cfg.train.train_iters) is int
    assert cfg.train.global_batch_size == 16 and type(cfg.train.global_batch_size) is int
    assert cfg.optimizer.lr == pytest.approx(1e-3) and type(cfg.optimizer.lr) is float
    assert cfg.optimizer.weight_decay == 0.0 and type(cfg.optimizer.weight_decay) is float
    assert cfg.optimizer.min_lr == pytest.approx(2.5e-5) and type(cfg.optimizer.min_lr) is float
    assert cfg.run.tensorboard is False
    assert cfg.parallel.sequence_parallel is True
    assert cfg.model.freeze == ["vision", "adapter"]
    assert cfg.checkpoint.keep_last is None  # the override beats the file's 3
    assert cfg.train.exit_interval == 7 and type(cfg.train.exit_interval) is int
    assert cfg.data.tokenizer == "/tmp/x.model"
    # untouched fields keep their defaults
    assert cfg.train.seed == SailConfig().train.seed


def test_overrides_without_file_and_list_forms():
    cfg = load_config(None, ["model.freeze=[llm]", "optimizer.lr=0.5", "train.seed=7"])
    assert cfg.model.freeze == ["llm"]
    assert cfg.optimizer.lr == 0.5
    assert cfg.train.seed == 7
    assert load_config(None, ["model.freeze=vision"]).model.freeze == ["vision"]


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = _write(tmp_path, """
        train:
          train_itres: 5
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.train_itres" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_section_in_file(tmp_path):
    path = _write(tmp_path, "trainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="trainer") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unknown_key_in_override_names_key_and_override():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.llm.num_layer=6"])
    message = str(err.value)
    assert "model.llm.num_layer" in message
    assert "override" in message and "model.llm.num_layer=6" in message


@pytest.mark.parametrize("override,key", [
    ("train.train_iters=abc", "train.train_iters"),
    ("train.train_iters=1.5", "train.train_iters"),
    ("run.tensorboard=maybe", "run.tensorboard"),
    ("optimizer.lr=fast", "optimizer.lr"),
    ("train.seed=true", "train.seed"),
    ("model.freeze={a: 1}", "model.freeze"),
])
def test_bad_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)
    assert override in str(err.value)


def test_bad_type_in_file_names_file(tmp_path):
    path = _write(tmp_path, "train:\n  micro_batch_size: two\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.micro_batch_size" in str(err.value) and str(path) in str(err.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.train_iters"])


def test_unknown_preset():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.preset=sailvl9-huge"])
    message = str(err.value)
    assert "sailvl9-huge" in message
    for name in PRESETS:
        assert name in message  # lists the choices


def test_preset_fills_architecture_then_fields_override():
    cfg = load_config(None, ["model.preset=sailvl2-8b"])
    assert cfg.model.llm.num_layers == 36 and cfg.model.llm.hidden_size == 4096
    assert cfg.model.llm.num_attention_heads == 32
    assert cfg.model.vision.hidden_size == 1536 and cfg.model.vision.num_layers == 24

    cfg = load_config(None, ["model.preset=sailvl2-8b", "model.llm.num_layers=6"])
    assert cfg.model.llm.num_layers == 6
    assert cfg.model.llm.hidden_size == 4096  # the rest of the preset is kept
    assert PRESETS["sailvl2-8b"].llm.num_layers == 36  # the preset table is not mutated

    # the override wins regardless of order relative to the preset choice
    cfg = load_config(None, ["model.llm.num_layers=6", "model.preset=sailvl2-2b"])
    assert cfg.model.llm.num_layers == 6 and cfg.model.llm.hidden_size == 2048


def test_default_preset_is_tiny():
    cfg = load_config(None, [])
    assert cfg.model.preset == "tiny"
    assert cfg.model.llm.num_layers == PRESETS["tiny"].llm.num_layers
    assert cfg.model.vision.hidden_size == PRESETS["tiny"].vision.hidden_size


def test_dict_round_trip():
    cfg = load_config(None, [
        "model.preset=sailvl2-2b", "model.freeze=vision", "parallel.tensor_model_parallel_size=4",
        "optimizer.lr=3e-4", "checkpoint.keep_last=null", "model.llm.num_layers=6",
    ])
    tree = config_to_dict(cfg)
    assert isinstance(tree, dict) and tree["model"]["llm"]["num_layers"] == 6
    assert config_from_dict(tree) == cfg


def test_save_then_load_is_equal(tmp_path):
    cfg = load_config(None, [
        "model.preset=sailvl2-8b", "model.freeze=vision,adapter", "optimizer.lr=1e-5",
        "parallel.virtual_pipeline_model_parallel_size=2", "train.precision=bf16",
    ])
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    assert path.is_file() and not (tmp_path / "saved.yaml.tmp").exists()
    assert load_config(path) == cfg


# ---- resolve_layout: errors ----------------------------------------------------------------

def _layout_error(overrides, world_size=1, **kwargs) -> str:
    cfg = load_config(None, list(overrides))
    with pytest.raises(ConfigError) as err:
        resolve_layout(cfg, world_size, **kwargs)
    return str(err.value)


def test_tp_not_dividing_heads():
    message = _layout_error(["parallel.tensor_model_parallel_size=3"], world_size=3)
    assert "does not divide the LLM's 4 attention heads" in message


def test_world_size_not_divisible():
    message = _layout_error(["parallel.tensor_model_parallel_size=2"], world_size=3)
    assert "world size 3" in message and "not divisible" in message


def test_global_batch_not_divisible_by_micro_times_dp():
    message = _layout_error(["train.global_batch_size=8", "train.micro_batch_size=2"], world_size=3)
    assert "train.global_batch_size=8" in message and "2 x 3" in message
    message = _layout_error(["train.global_batch_size=8", "train.micro_batch_size=3"])
    assert "train.global_batch_size=8" in message


def test_vpp_without_pp():
    message = _layout_error(["parallel.virtual_pipeline_model_parallel_size=2"])
    assert "virtual_pipeline_model_parallel_size" in message
    assert "pipeline_model_parallel_size > 1" in message


def test_uneven_layer_split_hints_first_stage_layers():
    message = _layout_error(["parallel.pipeline_model_parallel_size=3"], world_size=3)
    assert "num_layers=4" in message
    assert "parallel.first_stage_llm_layers" in message


def test_uneven_split_after_first_stage_layers():
    message = _layout_error(["parallel.pipeline_model_parallel_size=3",
                             "parallel.first_stage_llm_layers=1"], world_size=3)
    assert "first_stage_llm_layers=1" in message


def test_vision_tp_must_be_one_or_tp():
    message = _layout_error(["parallel.tensor_model_parallel_size=2",
                             "parallel.vision_tensor_parallel_size=4"], world_size=2)
    assert "vision_tensor_parallel_size=4" in message and "1" in message


def test_fp8_needs_transformer_engine_on_gpu():
    message = _layout_error(["model.fp8=hybrid", "train.precision=bf16"])
    assert "Transformer Engine" in message
    message = _layout_error(["model.fp8=e4m3", "train.precision=bf16",
                             "model.transformer_impl=transformer_engine"],
                            cuda_available=True, te_available=False)
    assert "Transformer Engine" in message
    # with TE and a GPU the same settings are valid
    cfg = load_config(None, ["model.fp8=e4m3", "train.precision=bf16",
                             "model.transformer_impl=transformer_engine"])
    assert resolve_layout(cfg, 1, cuda_available=True, te_available=True).tp == 1


def test_expert_parallel_on_dense_preset():
    message = _layout_error(["parallel.expert_model_parallel_size=2"], world_size=2)
    assert "expert_model_parallel_size=2" in message and "dense" in message


def test_several_errors_in_one_config_error():
    message = _layout_error([
        "parallel.tensor_model_parallel_size=3",          # heads
        "parallel.virtual_pipeline_model_parallel_size=2",  # vpp without pp
        "parallel.expert_model_parallel_size=2",         # dense
        "model.fp8=hybrid", "train.precision=bf16",      # no TE
    ], world_size=4)                                     # not divisible by 3
    bullets = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(bullets) >= 5, message
    for needle in ("attention heads", "world size 4", "pipeline_model_parallel_size > 1",
                   "dense", "Transformer Engine"):
        assert needle in message, needle


# ---- resolve_layout: valid layouts ---------------------------------------------------------

def test_pp2_vpp2_four_layers():
    cfg = load_config(None, ["parallel.pipeline_model_parallel_size=2",
                             "parallel.virtual_pipeline_model_parallel_size=2"])
    layout = resolve_layout(cfg, 2)
    assert (layout.pp, layout.vpp, layout.tp, layout.dp) == (2, 2, 1, 1)
    assert layout.stage_layers == ((1, 1), (1, 1))
    assert layout.num_microbatches == 8 // 1  # micro-batch 1 (a packed row) by default


def test_pp2_with_no_llm_layers_on_first_stage():
    cfg = load_config(None, ["parallel.pipeline_model_parallel_size=2",
                             "parallel.first_stage_llm_layers=0"])
    layout = resolve_layout(cfg, 2)
    assert layout.stage_layers == ((0, 4),)


def test_default_layout_and_dp():
    cfg = load_config(None, [])
    layout = resolve_layout(cfg, 4)
    assert (layout.tp, layout.pp, layout.vpp, layout.dp) == (1, 1, 1, 4)
    assert layout.stage_layers == ((4,),)
    assert layout.num_microbatches == 8 // (1 * 4)
    assert layout.padded_vocab_size % 128 == 0 and layout.padded_vocab_size >= 256
    assert layout.sequence_parallel is False


def test_vision_tp_auto_replicates_when_tp_does_not_divide_vit_heads():
    cfg = load_config(None, ["model.preset=sailvl2-2b", "parallel.tensor_model_parallel_size=8"])
    assert cfg.model.vision.num_attention_heads == 12
    layout = resolve_layout(cfg, 8)
    assert layout.tp == 8 and layout.vision_tp == 1
    assert layout.vision_replicated
    assert layout.sequence_parallel is True  # default: on with TP > 1


@pytest.mark.parametrize("preset,tp", [("sailvl2-2b", 4), ("sailvl2-2b", 2), ("tiny", 2)])
def test_vision_tp_auto_follows_tp_when_it_divides(preset, tp):
    cfg = load_config(None, [f"model.preset={preset}", f"parallel.tensor_model_parallel_size={tp}"])
    layout = resolve_layout(cfg, tp)
    assert layout.vision_tp == tp
    assert not layout.vision_replicated


def test_padded_vocab_is_layout_independent():
    cfg = load_config(None, ["model.preset=sailvl2-2b"])
    sizes = {resolve_layout(load_config(None, ["model.preset=sailvl2-2b",
                                                f"parallel.tensor_model_parallel_size={tp}"]),
                            tp).padded_vocab_size for tp in (1, 2, 4, 8)}
    assert sizes == {resolve_layout(cfg, 1).padded_vocab_size}
    padded = sizes.pop()
    assert padded >= cfg.model.llm.vocab_size and padded % 128 == 0


# ---- ranges, choices and bounded YAML ------------------------------------------------------

def test_every_range_and_choice_problem_is_reported_together():
    bad = ["optimizer.lr=-1", "optimizer.adam_beta1=2", "model.llm.hidden_size=-64",
           "model.llm.num_layers=0", "train.clip_grad=-1", "hardware.gpu=tpu", "train.foo=1",
           "model.bar=2", "train.global_batch_size=100000000000", "data.seq_length=0"]
    with pytest.raises(ConfigError) as info:
        load_config(None, bad)
    text = str(info.value)
    assert text.startswith("11 configuration problems:")
    for part in ("optimizer.lr=-1.0 must be >= 0", "optimizer.adam_beta1=2.0 must be < 1",
                 "model.llm.hidden_size=-64 must be >= 1", "model.llm.num_layers=0 must be >= 1",
                 "train.clip_grad=-1.0 must be >= 0",
                 "'hardware.gpu' must be one of h100, h100-pcie, h200, got 'tpu'",
                 "unknown config key 'train.foo'", "unknown config key 'model.bar'",
                 "train.global_batch_size=100000000000 must be <= 16777216",
                 "data.seq_length=0 must be >= 1",
                 "optimizer.min_lr=0 must not exceed optimizer.lr=-1"):
        assert part in text, part
    assert "override 'optimizer.adam_beta1=2': optimizer.adam_beta1" in text   # where it came from


def test_min_lr_above_lr_and_range_errors_name_the_file(tmp_path):
    path = _write(tmp_path, """
        optimizer: {lr: 1.0e-4, min_lr: 1.0e-3}
        train: {eval_iters: 0}
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: optimizer.min_lr=0.001 must not exceed optimizer.lr=0.0001" in str(info.value)
    assert f"{path}: train.eval_iters=0 must be >= 1" in str(info.value)


def test_gpu_choices_are_the_gpus_mfu_knows():
    import typing

    from megatron_sail.config.schema import HardwareConfig
    from megatron_sail.costs.hardware import GPUS

    assert set(typing.get_args(typing.get_type_hints(HardwareConfig)["gpu"])) == set(GPUS)


ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
) + "model: {freeze: *i}\n"   # 10^9 list items once expanded, 500 bytes


@pytest.mark.parametrize("reader", ["config", "blend", "sweep"])
def test_alias_bomb_is_refused_at_once(tmp_path, reader):
    import time

    from megatron_sail.data.records.blend import BlendError, load_blend
    from megatron_sail.launch.sweep import SweepError, load_sweep

    path = _write(tmp_path, ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600
    load, error = {"config": (load_config, ConfigError), "blend": (load_blend, BlendError),
                   "sweep": (load_sweep, SweepError)}[reader]
    start = time.monotonic()
    with pytest.raises(error, match="more than 100000 YAML nodes once aliases are expanded"):
        load(path)
    assert time.monotonic() - start < 5


def test_yaml_size_recursion_and_nesting_limits(tmp_path):
    from megatron_sail.config.loader import YAML_MAX_BYTES

    big = tmp_path / "big.yaml"
    big.write_text("train: {seed: 1}\n" + "#" * YAML_MAX_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than the 1024 KiB limit"):
        load_config(big)
    with pytest.raises(ConfigError, match="refers to a node that contains it"):
        load_config(_write(tmp_path, "a: &a [*a]\n", "rec.yaml"))
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(_write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml"))
    flow = ", ".join(line for line in ALIAS_BOMB.splitlines() if not line.startswith("model"))
    with pytest.raises(ConfigError, match="once aliases are expanded"):
        load_config(None, ["model.freeze={" + flow + "}"])   # an override is YAML too


def test_a_global_batch_beyond_memory_is_refused_with_a_lower_bound():
    from megatron_sail.config.validation import step_memory_error

    cfg = load_config(None, ["train.global_batch_size=4096", "train.micro_batch_size=1"])
    layout = resolve_layout(cfg, 2)
    # synthetic: 64 tokens x 4 int64 tensors + one 112 px RGB uint8 image per sample
    per_sample = 4 * 8 * 64 + 3 * 112 * 112
    need = 2048 * per_sample * 2      # 2048 samples on each of the 2 local ranks
    assert step_memory_error(cfg, layout, 2, need) is None
    problem = step_memory_error(cfg, layout, 2, need - 1)
    assert problem.startswith("train.global_batch_size=4096: a step builds 2048 samples on each "
                              f"of 2 rank(s) here") and f"({per_sample} bytes per sample)" in problem

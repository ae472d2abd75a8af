"""Every Accelerate config parses with accelerate's own classes and launcher, and selects the engine it says.

The launcher's environment for each config (what `accelerate launch --config_file X` hands the training
processes) is built with accelerate's own functions, without starting anything; vlm-sft's engine detection
and 4-bit rules are checked against it, with the real recipes.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType
from accelerate.utils.launch import (
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
    prepare_simple_launcher_cmd_env,
)

from vlm_sft.training.distributed import EngineError, check_quantization, detect_engine
from vlm_sft.training.train import parse_recipe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "accelerate_configs"
# config -> (distributed_type, processes, engine vlm-sft detects, ZeRO stage)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, "single", None),
    "ddp.yaml": (DistributedType.MULTI_GPU, 2, "ddp", None),
    "cpu_ddp.yaml": (DistributedType.MULTI_GPU, 2, "ddp", None),
    "zero2.yaml": (DistributedType.DEEPSPEED, 2, "deepspeed", 2),
    "zero3.yaml": (DistributedType.DEEPSPEED, 2, "deepspeed", 3),
    "fsdp.yaml": (DistributedType.FSDP, 2, "fsdp", None),
}


def launcher_env(config: Path, *extra: str) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file config [extra] train.py` would run with, and its environment."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(config), *extra, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    # torchrun sets WORLD_SIZE in each child; the launcher's environment only knows the process count.
    env = {**env, "WORLD_SIZE": str(args.num_processes)}
    return args, env


def test_every_config_is_listed():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_classes(name: str):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)  # unknown top-level keys would be a TypeError here
    distributed_type, processes, _, _ = EXPECTED[name]
    assert config.distributed_type == distributed_type and config.num_processes == processes
    # Precision is the recipe's: a value here would override a recipe's `bf16: false` through the environment.
    assert config.mixed_precision == "no"
    assert config.use_cpu == (name == "cpu_ddp.yaml")
    text = (CONFIGS / name).read_text()
    assert text.startswith("#") and f"--config_file recipes/accelerate_configs/{name}" in text, "header with command"
    # Nested keys are merged into the launcher's arguments by name; a misspelt one would be silently ignored.
    known = {action.dest for action in launch_command_parser()._actions}
    nested = {**config.deepspeed_config, **config.fsdp_config}
    assert set(nested) <= known, set(nested) - known


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_environment_selects_the_engine(name: str):
    _, processes, engine_name, zero_stage = EXPECTED[name]
    args, env = launcher_env(CONFIGS / name)
    assert args.num_processes == processes
    engine = detect_engine(None, environ=env)
    assert (engine.name, engine.zero_stage, engine.world_size) == (engine_name, zero_stage, processes)


def test_cpu_ddp_takes_the_multi_process_launcher_and_cpu_flag_does_not():
    """The trap: `--cpu --num_processes 2` goes to the one-process launcher; cpu_ddp.yaml goes to torchrun."""
    args, _ = launcher_env(CONFIGS / "cpu_ddp.yaml")
    assert args.multi_gpu and not args.cpu and args.num_processes == 2  # launch_command -> multi_gpu_launcher
    parser = launch_command_parser()
    plain, _, _ = _validate_launch_command(parser.parse_args(["--cpu", "--num_processes", "2", "train.py"]))
    assert plain.cpu and not plain.multi_gpu and not plain.use_fsdp and not plain.use_deepspeed  # simple_launcher


@pytest.mark.parametrize("name", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_plugin_builds_from_the_launcher_environment(name: str):
    """DeepSpeed's own config as accelerate builds it (no deepspeed install needed): batch, accumulation, clipping
    and precision are left to the recipe ("auto")."""
    _, env = launcher_env(CONFIGS / name)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == EXPECTED[name][3]
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    assert ds["gradient_clipping"] == "auto"
    if name == "zero3.yaml":
        assert plugin.zero3_init_flag and ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_fsdp_environment_is_peft_qlora_recipe():
    """PEFT's FSDP-QLoRA settings reach the processes: FSDP1, use_orig_params off, CPU-RAM-efficient loading."""
    _, env = launcher_env(CONFIGS / "fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"  # required with CPU-RAM-efficient loading
    if torch.cuda.is_available():  # the plugin needs an accelerator to build
        from accelerate.utils import FullyShardedDataParallelPlugin

        with mock.patch.dict(os.environ, env):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 1 and plugin.use_orig_params is False and plugin.cpu_ram_efficient_loading


def _model_args(*overrides: str):
    return parse_recipe([str(REPO / "recipes" / "llava_qlora.yaml"), "--use_cpu", "true", *overrides]).model_args


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_llava_qlora_recipe_runs_under_every_config(name: str):
    check_quantization(_model_args(), detect_engine(None, environ=launcher_env(CONFIGS / name)[1]))


@pytest.mark.parametrize("name", ["zero3.yaml", "fsdp.yaml"])
def test_sharding_engines_refuse_4bit_without_float_storage_and_8bit(name: str):
    engine = detect_engine(None, environ=launcher_env(CONFIGS / name)[1])
    with pytest.raises(EngineError, match="bnb_4bit_quant_storage equal to dtype"):
        check_quantization(_model_args("--bnb_4bit_quant_storage", "uint8"), engine)
    plain = _model_args()
    plain.bnb_4bit_quant_storage = None  # TRL's default: packed as uint8
    with pytest.raises(EngineError, match="only floating-point tensors"):
        check_quantization(plain, engine)
    with pytest.raises(EngineError, match="load_in_8bit cannot run under"):
        check_quantization(_model_args("--load_in_4bit", "false", "--load_in_8bit", "true"), engine)


@pytest.mark.parametrize("name", ["single_gpu.yaml", "ddp.yaml", "zero2.yaml"])
def test_replicating_engines_take_any_quantization(name: str):
    engine = detect_engine(None, environ=launcher_env(CONFIGS / name)[1])
    plain = _model_args()
    plain.bnb_4bit_quant_storage = None
    check_quantization(plain, engine)
    check_quantization(_model_args("--load_in_4bit", "false", "--load_in_8bit", "true"), engine)

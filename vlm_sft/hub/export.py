"""`export --for vllm`: a base copy with everything but the language model's LoRA merged in, plus that LoRA alone.

vLLM (and TGI) load LoRA on the language model only and refuse `modules_to_save`, which holds our fully
trained projector. The export splits the adapter in two:

    DIR/base/     the base model with the trained projector (and any LoRA outside the language model) merged
                  in, in 16-bit, with the run's processor and chat template
    DIR/adapter/  the language model's LoRA, no `modules_to_save`: what `vllm serve DIR/base --enable-lora
                  --lora-modules NAME=DIR/adapter` loads (several such adapters can share one base only when
                  they were trained with the same projector, i.e. a frozen one)

Loaded with transformers + PEFT, base + adapter answer exactly like the original adapter on its base; the
export checks that by greedy answers (export_check.json), as `vlm-sft merge` does.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from vlm_sft.hub.adapters import (
    MERGE_DTYPES,
    attach_adapter,
    base_of,
    load_base_model,
    resolve_adapter,
)
from vlm_sft.hub.serving import EXPORT_CHECK_FILE, refuse_failed_check
from vlm_sft.modeling.setup import components_for

logger = logging.getLogger(__name__)

TARGETS = ("vllm",)


def _split_state(model: Any, language_model: str) -> tuple[dict, list[str], list[str]]:
    """(the LoRA weights of the language model, its LoRA layer names, the other LoRA layers' names)."""
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    layers = [name for name, module in inner.named_modules() if isinstance(module, LoraLayer)]
    in_lm = [name for name in layers if name.startswith(language_model + ".")]
    prefixes = tuple(f"base_model.model.{name}." for name in in_lm)
    state = {k: v for k, v in get_peft_model_state_dict(model).items() if k.startswith(prefixes) and ".lora_" in k}
    return state, in_lm, [name for name in layers if name not in in_lm]


def _lm_adapter_config(config: Any, in_lm: list[str], outside: list[str]) -> Any:
    """The LoRA config of the language-model-only adapter: no modules_to_save, targets inside the language model."""
    lm_config = copy.deepcopy(config)
    lm_config.modules_to_save = None
    if outside:  # the original targets reach beyond the language model: name its layers one by one
        lm_config.target_modules = sorted(in_lm)
    return lm_config


def _split_model(model: Any, language_model: str) -> tuple[Any, dict, Any]:
    """(the base with everything but the language model's LoRA merged in, that LoRA's weights, its config)."""
    config = model.peft_config[model.active_adapter]
    if getattr(config, "use_dora", False):
        raise ValueError("The adapter uses DoRA, which vLLM does not load: serve the merged model (vlm-sft merge).")
    state, in_lm, outside = _split_state(model, language_model)
    if not in_lm:
        raise ValueError(f"The adapter has no LoRA in the language model ({language_model}): serve it merged.")
    inner = model.get_base_model()
    for name in outside:  # LoRA on the vision tower (or elsewhere): into the base weights
        inner.get_submodule(name).merge()
    # unload() drops the LoRA layers unmerged (the language model keeps the base's weights, the layers merged
    # above keep theirs) and swaps the trained copy of each `modules_to_save` (the projector) into the model.
    return model.unload(), state, _lm_adapter_config(config, in_lm, outside)


def _save_adapter(folder: Path, state: dict, config: Any, base_dir: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config.base_model_name_or_path = str(base_dir.resolve())
    config.save_pretrained(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, folder / "adapter_model.safetensors")


def _load_export(folder: Path, dtype: str) -> Any:
    """The export as a user loads it with transformers + PEFT: the base folder, then the adapter on it."""
    return attach_adapter(load_base_model(str(folder / "base"), None, dtype), folder / "adapter").eval()


def export_adapter(
    adapter: str | Path,
    out_dir: str | Path,
    *,
    target: str = "vllm",
    revision: str | None = None,
    base: str | None = None,
    dtype: str = "bfloat16",
    check: Any = None,
) -> Path:
    """Write DIR/base and DIR/adapter (see the module docstring); with `check`, prove them by greedy answers."""
    import gc

    from transformers import AutoProcessor

    if target not in TARGETS:
        raise ValueError(f"--for must be one of {', '.join(TARGETS)}; got {target!r}.")
    if dtype not in MERGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MERGE_DTYPES)} (never a quantized base); got {dtype!r}.")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder.")
    adapter_dir = resolve_adapter(adapter, revision)
    base_name, base_revision = base_of(adapter_dir, base)
    model = attach_adapter(load_base_model(base_name, base_revision, dtype), adapter_dir)
    processor = AutoProcessor.from_pretrained(adapter_dir)
    language_model = components_for(model.config).language_model
    if check is not None:
        check.record(model.eval(), processor)
    split_base, state, lm_config = _split_model(model, language_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        split_base.save_pretrained(partial / "base")
        processor.save_pretrained(partial / "base")
        # The adapter names the base by where it will be once the export is in place.
        _save_adapter(partial / "adapter", state, lm_config, out / "base")
        processor.save_pretrained(partial / "adapter")
        del model, split_base
        gc.collect()
        result = None
        if check is not None:
            result = check.compare(_load_export(partial, dtype), processor, dtype)
            (partial / EXPORT_CHECK_FILE).write_text(json.dumps(result, indent=2) + "\n")
        (partial / "README.md").write_text(export_readme(out, adapter, result))
        refuse_failed_check(result, partial, out, adapter, what="export", check_file=EXPORT_CHECK_FILE)
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("Exported %s for %s: %s", adapter, target, out)
    return out


def export_readme(out: Path, adapter: str | Path, check: dict | None) -> str:
    """The export folder's README: what is in it, how to serve it, and its check."""
    from vlm_sft.hub.serving import check_paragraph

    lines = [
        f"# {out.name}: {adapter} exported for vLLM",
        "",
        "- `base/`: the base model with the trained projector merged in (and any LoRA outside the language model).",
        "- `adapter/`: the language model's LoRA alone (no `modules_to_save`).",
        "",
        "```bash",
        f"vllm serve {out}/base --enable-lora --lora-modules {out.name}={out}/adapter",
        "```",
        "",
        "transformers + PEFT: load `base/` with AutoModelForImageTextToText, then PeftModel.from_pretrained(model, "
        "'adapter/'). More in vlm-sft's docs/serving.md.",
        "",
    ]
    return "\n".join(lines) + (check_paragraph(check, "export") if check is not None else "")

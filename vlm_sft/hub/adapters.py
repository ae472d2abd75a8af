"""The Hub: push an output directory with our model card; pull adapters by id or folder; merge into a 16-bit base.

Push uploads what a user of the adapter needs (adapter, processor with chat template, card, loss plot, eval
report) and nothing that only resumes training (checkpoints, optimizer states, `training_args.bin`) unless
asked. The token comes from huggingface_hub's usual sources (`HF_TOKEN`, `hf auth login`; recipes may not
carry one) or a `hub_token` set in code, and is never written or logged.

Pull takes a Hub id (with an optional revision) or a local folder everywhere an adapter is taken. A Hub id
is fetched with `snapshot_download`, so `HF_HUB_OFFLINE=1` serves it from the HF cache.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_sft.hub.availability import check_model_available
from vlm_sft.hub.model_card import (
    SUMMARY_FILE,
    build_adapter_card,
    build_merged_card,
    is_hub_id,
    resolve_base_model,
)
from vlm_sft.hub.serving import MERGE_CHECK_FILE, check_paragraph, refuse_failed_check

logger = logging.getLogger(__name__)

# Top-level files uploaded by default (matched on the file name).
ADAPTER_FILES = ("adapter_config.json", "adapter_model*.safetensors", "adapter_model.safetensors.index.json")
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
)
PROCESSOR_DIRS = ("additional_chat_templates",)  # extra named chat templates saved by the processor
REPORT_FILES = (
    "README.md",
    "loss.png",
    "eval_report.json",
    "eval_report.md",
    "eval_report.png",
    "trainable_parameters.json",
    SUMMARY_FILE,
)
# What a pull never fetches: training state that an adapter repo may hold when a user pushed it on purpose.
# `*.bin`: pickles (training_args.bin, a legacy adapter_model.bin) are never fetched; adapters load from safetensors.
PULL_IGNORE = ["checkpoint-*", "runs/*", "*.pt", "*.pth", "*.bin"]
MERGE_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class PushRequest:
    """Where and how to push; the token is kept out of repr so it never reaches a log line."""

    repo_id: str
    revision: str | None = None
    private: bool | None = None
    base_model: str | None = None
    license: str | None = None
    datasets: list[str] | None = None
    description: str | None = None
    include_checkpoints: bool = False
    include: list[str] = field(default_factory=list)
    token: str | None = field(default=None, repr=False)


def select_upload_files(
    output_dir: str | Path, *, include_checkpoints: bool = False, include: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Relative paths to upload: adapter, processor, card and reports; checkpoints and `include` globs if asked."""
    out = Path(output_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} does not exist or is not a folder: give a training run's output_dir.")
    default = ADAPTER_FILES + PROCESSOR_FILES + REPORT_FILES
    selected = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        top = rel.split("/", 1)[0]
        if "/" not in rel and any(fnmatch.fnmatch(rel, pattern) for pattern in default):
            selected.append(rel)
        elif top in PROCESSOR_DIRS and path.parent.name == top:
            selected.append(rel)
        elif include_checkpoints and fnmatch.fnmatch(top, "checkpoint-*") and "/" in rel:
            selected.append(rel)
        elif any(fnmatch.fnmatch(rel, pattern) for pattern in include):
            selected.append(rel)
    if not any(fnmatch.fnmatch(rel, "adapter_model*.safetensors") for rel in selected):
        raise FileNotFoundError(f"No adapter_model*.safetensors in {out}: is it the output_dir of a LoRA run?")
    return selected


def _stage(output_dir: Path, files: list[str], staging: Path, base_model: str | None) -> None:
    """Link (or copy) the files to upload into `staging`; the uploaded JSON files name the base by Hub id.

    PEFT records the path the base was loaded from; a local folder there makes `AutoPeftModel` and the
    Hub's model tree fail for everyone else (and tells them about this machine's folders), so the
    uploaded copies get the card's Hub id. The local folder keeps its own, which works here.
    """
    for rel in files:
        src, dst = output_dir / rel, staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in ("adapter_config.json", SUMMARY_FILE) and base_model:
            config = json.loads(src.read_text())
            old = config.get("base_model_name_or_path")
            if old != base_model:
                logger.info("The uploaded %s names the base %s (locally: %s).", rel, base_model, old)
                config["base_model_name_or_path"] = base_model
            dst.write_text(json.dumps(config, indent=2) + "\n")
            continue
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)


def push_output_dir(output_dir: str | Path, request: PushRequest, commit_message: str | None = None) -> str:
    """Refresh the card, create the repo (and branch), upload the selected files in one commit; return its URL."""
    from huggingface_hub import HfApi

    out = Path(output_dir)
    files = select_upload_files(out, include_checkpoints=request.include_checkpoints, include=request.include)
    card_args = {
        "base_model": request.base_model,
        "license": request.license,
        "datasets": request.datasets,
        "description": request.description,
    }
    # Build the card before touching the Hub: a local base_model path is refused here, not by the Hub.
    build_adapter_card(out, repo_id=request.repo_id, **card_args)
    api = HfApi(token=request.token)
    repo_id = api.create_repo(request.repo_id, private=request.private, exist_ok=True).repo_id
    if request.revision and request.revision != "main":
        api.create_branch(repo_id, branch=request.revision, exist_ok=True)
    card = build_adapter_card(out, repo_id=repo_id, **card_args)  # the snippet loads the repo by its full id
    card.save(out / "README.md")  # refreshed on push, so the folder and the repo agree
    if card.data.license is None:
        logger.warning("The card has no license: pass --license (the base model's card has none we can read).")
    base_model = card.data.base_model
    with tempfile.TemporaryDirectory(prefix="vlm-sft-push-") as tmp:
        _stage(out, files, Path(tmp), base_model)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=request.revision,
            commit_message=commit_message or "Upload adapter with vlm-sft",
        )
    logger.info("Pushed %d files to %s", len(files), info.commit_url)
    return info.commit_url


def take_over_push(training_args: Any, model_args: Any, vision: Any) -> PushRequest | None:
    """Turn the Trainer's own pushing off (it uploads TRL's text-model card) and return ours, for the end of training.

    Also checks now, before training, what would otherwise fail after it: the card needs the base's Hub id.
    The recipe's hub_token moves out of the arguments, so `training_args.bin` cannot carry it.
    """
    token, training_args.hub_token = training_args.hub_token, None  # never pickled into training_args.bin
    if not training_args.push_to_hub:
        return None
    resolve_base_model(
        None,
        {"hub_base_model_id": vision.hub_base_model_id, "base_model_name_or_path": model_args.model_name_or_path},
        required=True,
    )
    strategy = getattr(training_args.hub_strategy, "value", training_args.hub_strategy)
    if strategy not in ("end", "every_save"):
        logger.warning("hub_strategy=%s: only the final adapter is pushed; checkpoints are kept locally.", strategy)
    request = PushRequest(
        repo_id=training_args.hub_model_id or Path(training_args.output_dir).absolute().name,
        revision=training_args.hub_revision,
        private=training_args.hub_private_repo,
        base_model=vision.hub_base_model_id,
        token=token,
    )
    training_args.push_to_hub = False
    return request


class PushError(RuntimeError):
    """The push did not reach the Hub (or the Hub refused it); the message says how to retry."""


def push_after_training(output_dir: str | Path, request: PushRequest) -> str:
    """The end-of-training push; on failure, say how to retry: the adapter is saved either way."""
    try:
        return push_output_dir(output_dir, request, commit_message="End of training")
    except Exception as err:  # noqa: BLE001 - network, auth, Hub errors: all leave a saved adapter to push later
        raise PushError(
            f"push to {request.repo_id} failed ({type(err).__name__}: {err}); the adapter is saved in {output_dir}. "
            f"Retry with: vlm-sft push {output_dir} {request.repo_id}"
        ) from None


def resolve_adapter(adapter: str | Path, revision: str | None = None) -> Path:
    """A local adapter folder, or the HF-cache snapshot of a Hub id at `revision` (offline: from the cache only)."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        if revision:
            raise ValueError(f"--revision is for Hub ids; {adapter} is a local folder.")
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"No adapter_config.json in {path}: is it an adapter folder?")
        return _require_safetensors(path, str(adapter))
    if not is_hub_id(str(adapter)):
        raise FileNotFoundError(f"{str(adapter)!r} is neither a local folder nor a Hub id (namespace/name).")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        local = snapshot_download(str(adapter), revision=revision, ignore_patterns=PULL_IGNORE)
    except LocalEntryNotFoundError as err:
        at = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(
            f"Adapter {adapter}{at} is not in the HF cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}. Pull it once online, or point "
            "HF_HOME / HF_HUB_CACHE at the cache that has it."
        ) from err
    if not Path(local, "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} has no adapter_config.json: is it an adapter repo?")
    return _require_safetensors(Path(local), str(adapter))


def _require_safetensors(adapter_dir: Path, adapter: str) -> Path:
    """Adapters load from safetensors only: PEFT would otherwise unpickle `adapter_model.bin` (arbitrary code)."""
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"{adapter} has no adapter_model.safetensors; pickled weights (adapter_model.bin) are not loaded. "
            "Re-save the adapter with safetensors (PEFT's default)."
        )
    return adapter_dir


def base_of(adapter_dir: Path, base: str | None) -> tuple[str, str | None]:
    """The base model to load (explicit, else the one the adapter names) and its revision when known."""
    if base:
        return base, None
    config = read_json_file(adapter_dir / "adapter_config.json")
    name = config.get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base model: pass --base.")
    summary_path = adapter_dir / SUMMARY_FILE
    summary = read_json_file(summary_path) if summary_path.is_file() else {}
    revision = summary.get("base_model_revision") if summary.get("base_model_name_or_path") == name else None
    if not is_hub_id(name) and not Path(name).exists():
        raise FileNotFoundError(
            f"The adapter was trained on the local base {name!r}, which is not here: pass --base PATH_OR_HUB_ID."
        )
    return name, revision


def trained_system_prompt(adapter_dir: str | Path) -> str | None:
    """The system prompt the run that saved `adapter_dir` trained with (its training summary), or None."""
    path = Path(adapter_dir) / SUMMARY_FILE
    return json.loads(path.read_text()).get("system_prompt") if path.is_file() else None


def load_base_model(base: str, revision: str | None = None, dtype: Any = "auto", device_map: str | None = None) -> Any:
    """The base model in 16/32-bit (never quantized), from safetensors: what inference, eval and merging start from.

    `dtype`: "auto", a torch dtype name ("bfloat16") or a `torch.dtype`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_model_available(base, revision, what="base model")  # seconds, not minutes of retries, when offline
    config = AutoConfig.from_pretrained(base, revision=revision)
    if getattr(config, "quantization_config", None):
        raise ValueError(
            f"{base} is a pre-quantized checkpoint ({config.quantization_config.get('quant_method', 'quantized')}). "
            "Load the adapter onto the 16-bit original instead (--base <its Hub id>): merging into quantized "
            "weights degrades the model."
        )
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    return AutoModelForImageTextToText.from_pretrained(
        base, revision=revision, dtype=torch_dtype, device_map=device_map, use_safetensors=True
    )


def attach_adapter(model: Any, adapter_dir: Path) -> Any:
    """`model` with the adapter of a folder checked by `resolve_adapter` (so its weights are safetensors)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, adapter_dir)
    except SafetensorError as err:  # cut off while copied or downloaded
        raise ValueError(
            f"{adapter_dir / 'adapter_model.safetensors'} is corrupt or truncated ({err}): copy or download the "
            "adapter again."
        ) from None


def read_json_file(path: Path) -> dict:
    """A JSON object from `path`; a broken file is a ValueError naming it."""
    try:
        value = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): restore it from the run or the Hub.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object: restore it from the run or the Hub.")
    return value


def load_adapter_model(
    adapter: str | Path,
    *,
    revision: str | None = None,
    base: str | None = None,
    dtype: str = "auto",
    device_map: str | None = None,
) -> tuple[Any, Any, Path]:
    """(base + adapter in eval mode, the adapter's processor, the adapter's local folder)."""
    adapter_dir = resolve_adapter(adapter, revision)
    base_name, base_revision = base_of(adapter_dir, base)
    model = attach_adapter(load_base_model(base_name, base_revision, dtype, device_map), adapter_dir)
    model.eval()
    return model, load_adapter_processor(adapter_dir), adapter_dir


def load_adapter_processor(adapter_dir: Path) -> Any:
    """The run's processor and chat template; an adapter saved before the training template gets it applied
    (`vlm_sft.rendering.use_training_template`), so prompts render as its training did."""
    from transformers import AutoProcessor

    from vlm_sft.rendering import use_training_template

    processor = AutoProcessor.from_pretrained(adapter_dir)
    use_training_template(processor)
    return processor


def trained_dtype(adapter_dir: Path) -> str | None:
    """The `dtype` the run trained with, from its training_summary.json (None when not recorded)."""
    try:
        summary = json.loads((adapter_dir / "training_summary.json").read_text())
    except (OSError, ValueError):
        return None
    return (summary.get("training_precision") or {}).get("dtype")


def merge_adapter(
    adapter: str | Path,
    out_dir: str | Path,
    *,
    revision: str | None = None,
    base: str | None = None,
    base_model_id: str | None = None,
    dtype: str = "bfloat16",
    check: Any = None,
) -> Path:
    """Merge the adapter into its base loaded in `dtype` (16-bit, never 4-bit); save model, processor and card.

    Everything is written into a hidden sibling folder that is renamed to `out_dir` at the end, so a crash
    never leaves a folder that looks like a (partial) model. `check` (a `GreedyAgreement`) answers its
    questions with the adapter on its base before merging and with the merged model reloaded from disk
    after; the result goes to merge_check.json and the card. A failed check raises `MergeCheckError` and
    leaves the merge aside in `<out_dir>.failed-check-*` for inspection; the adapter is never touched.
    """
    if dtype not in MERGE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MERGE_DTYPES)} (never a quantized base); got {dtype!r}.")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: merge into a new folder.")
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a merge that was killed while saving
        logger.warning("Removing %s, left by an interrupted merge.", stale)
        shutil.rmtree(stale, ignore_errors=True)
    adapter_dir = resolve_adapter(adapter, revision)
    base_name, base_revision = base_of(adapter_dir, base)
    trained = trained_dtype(adapter_dir)
    if trained not in (None, "auto", dtype):  # legitimate (fp32 training, 16-bit serving), but say so
        logger.warning(
            "%s was trained with dtype %s; merging in %s (--dtype %s to match).", adapter, trained, dtype, trained
        )
    model = attach_adapter(load_base_model(base_name, base_revision, dtype), adapter_dir)
    processor = load_adapter_processor(adapter_dir)  # processor + training chat template travel along
    if check is not None:
        check.record(model.eval(), processor)
    merged = model.merge_and_unload()  # W + (alpha / r) * B @ A, and the fully trained projector swapped in
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(partial)
        processor.save_pretrained(partial)
        del model, merged  # the check reloads what was written, as a user would
        result = _check_merged(partial, processor, check, dtype) if check is not None else None
        card = build_merged_card(
            adapter_dir,
            adapter_ref=str(adapter),
            revision=revision,
            base_model=base_model_id or (base_name if is_hub_id(base_name) else None),
            dtype=dtype,
            out_ref=str(out),
            template_dir=partial,
        )
        if result is not None:
            card.content = card.content.rstrip("\n") + "\n\n" + check_paragraph(result)
        card.save(partial / "README.md")
        refuse_failed_check(result, partial, out, adapter, what="merge", check_file=MERGE_CHECK_FILE)
        if out.exists():
            out.rmdir()  # empty (checked above); fails, keeping both, if something was written there meanwhile
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("Merged %s into %s (%s): %s", adapter, base_name, dtype, out)
    return out


def _check_merged(folder: Path, processor: Any, check: Any, dtype: str) -> dict:
    """Reload the merged folder and compare its greedy answers with the recorded ones; write merge_check.json."""
    import gc

    gc.collect()  # the merged model in memory is gone before its copy from disk is loaded
    result = check.compare(load_base_model(str(folder), None, dtype), processor, dtype)
    (folder / MERGE_CHECK_FILE).write_text(json.dumps(result, indent=2) + "\n")
    logger.info("Merge check: %d of %d answers identical.", result["identical"], result["n"])
    return result

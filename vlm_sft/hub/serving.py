"""What the cards say about serving: which engines can take an adapter as it is, and how a merge was checked.

Plain text builders, so whichever way the card is assembled (f-strings or a template) it only inserts them.
docs/serving.md has the commands in full.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

MERGE_CHECK_FILE = "merge_check.json"
EXPORT_CHECK_FILE = "export_check.json"

# Module names that sit outside the language model in the families we train (vision tower, projector).
_VISION_NAMES = ("vision", "visual", "multi_modal_projector", "mm_projector", "connector", "merger", "img_projection")


def _targets_vision(target_modules: Any) -> bool:
    """Whether the LoRA targets name a vision-tower or projector module (our presets name the language model only)."""
    text = target_modules if isinstance(target_modules, str) else " ".join(map(str, target_modules or ()))
    return any(name in text for name in _VISION_NAMES)


def serving_paragraph(adapter_config: dict, summary: dict | None = None) -> str:
    """The card's "Serving" paragraph: which of adapter / merged / `export --for vllm` apply to this adapter."""
    summary = summary or {}
    lora = summary.get("lora") or {}
    projector = bool(adapter_config.get("modules_to_save")) or bool(lora.get("train_projector"))
    vision_lora = bool(lora.get("on_vision_tower")) or _targets_vision(adapter_config.get("target_modules"))
    dora = bool(adapter_config.get("use_dora"))
    lines = [
        "- transformers + PEFT: load the adapter on its base as shown above (everything this adapter trained).",
        "- Merged (`vlm-sft merge --adapter ADAPTER --out DIR`): one standalone model for any engine "
        "(vLLM, TGI, transformers), checked by greedy answers against the adapter (merge_check.json).",
    ]
    trained = [
        part for part, on in (("projector trained", projector), ("LoRA on the vision tower", vision_lora)) if on
    ]
    if dora:
        lines.append("- vLLM / TGI with the adapter: not supported (DoRA); serve the merged model.")
    elif trained:
        lines.append(
            f"- vLLM / TGI: {' and '.join(trained)}, which they do not load from an adapter (LoRA on the language "
            "model only, no `modules_to_save`): serve merged, or via `vlm-sft export --for vllm` (a base copy "
            "with those parts merged in, plus a language-model-only adapter)."
        )
    else:
        lines.append("- vLLM / TGI: LoRA on the language model only, so the adapter loads as it is (multi-LoRA).")
    return "\n".join(["## Serving", "", *lines, "", "Commands: docs/serving.md in vlm-sft."])


def check_paragraph(check: dict, what: str = "merge") -> str:
    """The card's account of a merge (or export) check: how many greedy answers matched the adapter's."""
    verdict = "passed" if check.get("passed") else "FAILED"
    ties = check.get("within_rounding", 0)
    tie_text = f", {ties} parting only at a near-tie that {check['dtype']} rounding decides" if ties else ""
    return (
        f"## {what.capitalize()} check ({verdict})\n\n"
        f"Reloaded from disk and asked {check['n']} questions ({check.get('eval_set', 'eval set')}) by "
        f"{check.get('decoding', 'greedy decoding')}, next to the adapter on its base in {check['dtype']}: "
        f"{check['identical']} of {check['n']} answers identical{tie_text}, {check['differ']} different; largest "
        f"first-token logit difference {check['max_abs_logit_diff']:.4g}.\n"
    )


class MergeCheckError(RuntimeError):
    """The merged model does not answer like the adapter on its base."""


def refuse_failed_check(
    result: dict | None, partial: Path, out: Path, adapter: Any, *, what: str, check_file: str
) -> None:
    """A failed check (merge or export): the attempt goes to `<out>.failed-check-*` for inspection, nothing to `out`,
    and `MergeCheckError` says how many answers differ. A passed check (or none) does nothing."""
    if result is None or result["passed"]:
        return
    failed = out.parent / f"{out.name}.failed-check-{uuid.uuid4().hex[:8]}"
    os.replace(partial, failed)
    raise MergeCheckError(
        f"the {what} answers {result['differ']} of {result['n']} check questions differently from the adapter on its "
        f"base (first-token logits differ by up to {result['max_abs_logit_diff']:.4g}). Nothing was written to {out}; "
        f"the failed {what} is in {failed} (see {check_file}); the adapter {adapter} is untouched."
    )

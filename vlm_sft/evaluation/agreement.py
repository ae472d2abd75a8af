"""Do two models answer alike? Greedy answers and first-token logits on the same rows, compared.

Used to prove a merge or an export: the adapter on its base is the reference, the merged (or exported)
model the candidate. Prompts go through `generate_answers`, the path evaluation uses, so the check sees
exactly what `vlm-sft eval` would; a thin wrapper around the model records the logits of the first
generated token on the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlm_sft.evaluation.generate import generate_answers, load_eval_set

CHECK_QUESTION = "Describe this image."
SHOWN_DIFFERENCES = 5  # differing answers written into the check, enough to see what went wrong
# How far apart (in units of the dtype's rounding, times the logits' size) two tokens may be and still count as a
# tie that rounding decides: merging rounds W + BA once where the adapter rounds W x and BA x apart.
ROUNDING_ULPS = 8


class _Recorder:
    """A model stand-in for `generate_answers` that keeps, per batch, each step's logits and the generated ids."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.steps: list[torch.Tensor] = []  # per batch: (rows, steps, vocab), float32 on the CPU
        self.ids: list[torch.Tensor] = []  # per batch: (rows, steps)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def eval(self) -> _Recorder:
        self.model.eval()
        return self

    def generate(self, **kwargs: Any) -> torch.Tensor:
        out = self.model.generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        self.steps.append(torch.stack(out.logits, dim=1).float().cpu())
        self.ids.append(out.sequences[:, kwargs["input_ids"].shape[1] :].cpu())
        return out.sequences

    def rows(self) -> list[Output]:
        """(step logits, generated ids) of every row, in order."""
        return [(logits[i], ids[i]) for logits, ids in zip(self.steps, self.ids, strict=True) for i in range(len(ids))]


Output = tuple[torch.Tensor, torch.Tensor]  # one row's (step logits, generated ids)


def rounding_tie(reference: Output, candidate: Output, dtype: str) -> bool:
    """Whether two greedy answers part at a near-tie that `dtype` rounding can flip, rather than a real difference.

    At the first differing token both models saw the same prefix; each must rank the other's token within
    `ROUNDING_ULPS` units of `dtype` rounding (relative to the logits' size) of its own choice.
    """
    (ref_logits, ref_ids), (cand_logits, cand_ids) = reference, candidate
    steps = min(len(ref_ids), len(cand_ids))
    differ = (ref_ids[:steps] != cand_ids[:steps]).nonzero()
    if not len(differ):
        return False  # the same tokens as far as both go: a difference this rule cannot explain
    k = int(differ[0])
    a, b = int(ref_ids[k]), int(cand_ids[k])
    scale = max(1.0, float(ref_logits[k].abs().max()))
    tolerance = ROUNDING_ULPS * torch.finfo(getattr(torch, dtype)).eps * scale
    return bool(
        ref_logits[k, a] - ref_logits[k, b] <= tolerance and cand_logits[k, b] - cand_logits[k, a] <= tolerance
    )


class GreedyAgreement:
    """Record the reference model's greedy answers on `rows`, then compare a candidate's against them."""

    def __init__(self, rows: Sequence[dict], *, source: str, batch_size: int = 8, max_new_tokens: int = 32) -> None:
        if not rows:
            raise ValueError(f"No examples to check on in {source}.")
        self.rows, self.source = list(rows), source
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.answers: list[str] | None = None
        self.outputs: list[Output] | None = None
        self.result: dict | None = None  # the last compare()

    def _probe(self, model: Any, processor: Any) -> tuple[list[str], list[Output]]:
        recorder = _Recorder(model)
        answers = generate_answers(
            recorder, processor, self.rows, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )
        return answers, recorder.rows()

    def record(self, model: Any, processor: Any) -> None:
        """Answer every row with the reference model (the adapter on its base)."""
        self.answers, self.outputs = self._probe(model, processor)

    def compare(self, model: Any, processor: Any, dtype: str) -> dict:
        """The check: {n, identical, within_rounding, differ, passed, max_abs_logit_diff (first token), dtype, ...}."""
        if self.answers is None or self.outputs is None:
            raise RuntimeError("record() the reference model before compare().")
        answers, outputs = self._probe(model, processor)
        pairs = list(zip(self.answers, answers, self.outputs, outputs, strict=True))
        unequal = [i for i, (a, b, _, _) in enumerate(pairs) if a != b]
        ties = [i for i in unequal if rounding_tie(pairs[i][2], pairs[i][3], dtype)]
        differing = [i for i in unequal if i not in ties]
        first = max(
            float((ref[0][0] - cand[0][0]).abs().max()) for ref, cand in zip(self.outputs, outputs, strict=True)
        )
        self.result = {
            "n": len(answers),
            "identical": len(answers) - len(unequal),
            "within_rounding": len(ties),  # answers that part where both models see a near-tie
            "differ": len(differing),
            "passed": not differing,
            "max_abs_logit_diff": round(first, 6),
            "dtype": dtype,
            "decoding": f"greedy, max_new_tokens={self.max_new_tokens}",
            "eval_set": self.source,
            "differences": [
                {"index": i, "reference": self.answers[i], "candidate": answers[i], "within_rounding": i in ties}
                for i in unequal[:SHOWN_DIFFERENCES]
            ],
        }
        return self.result


def check_rows(
    eval_file: str | Path | None = None,
    image_dir: str | Path | None = None,
    *,
    recipe: Any = None,
    limit: int = 8,
    system_prompt: str | None = None,
) -> tuple[list[dict], str]:
    """(rows, where they came from): the recipe's eval split, `eval_file`, else `limit` synthetic questions."""
    if eval_file:
        eval_set = load_eval_set(eval_file, image_dir, limit=limit, system_prompt=system_prompt)
        return eval_set.rows, eval_set.path
    if recipe is not None:
        from vlm_sft.training.recipe import recipe_eval_set

        eval_set = recipe_eval_set(recipe, limit=limit)
        if eval_set is not None:
            return eval_set.rows, eval_set.path
    return synthetic_rows(limit, system_prompt), f"{limit} synthetic images asked {CHECK_QUESTION!r}"


def synthetic_rows(n: int, system_prompt: str | None = None) -> list[dict]:
    """`n` seeded noise images, each with one question: enough to tell two models apart without an eval set."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        pixels = (torch.rand(64, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
        messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
        messages += [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CHECK_QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]},  # split off: only the prompt is used
        ]
        rows.append({"images": [Image.fromarray(pixels)], "messages": messages})
    return rows


def agreement_for(
    eval_file: str | None,
    image_dir: str | None,
    recipe_path: str | None,
    *,
    n: int = 8,
    max_new_tokens: int = 32,
) -> GreedyAgreement:
    """The check of a merge or export, on `eval_file`, else the recipe's eval split, else synthetic questions."""
    if n < 1:
        raise ValueError(f"--check-n must be at least 1 (got {n}); --no-check skips the check.")
    recipe = None
    if recipe_path and not eval_file:
        from vlm_sft.training.recipe import load_recipe

        recipe = load_recipe(recipe_path)
    rows, source = check_rows(eval_file, image_dir, recipe=recipe, limit=n)
    return GreedyAgreement(rows, source=source, max_new_tokens=max_new_tokens)

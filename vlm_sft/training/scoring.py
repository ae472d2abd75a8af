"""Scored evaluation during training: at every evaluation the current adapter answers (a seeded subset of) the
eval set by greedy generation, scored with `vlm-sft eval`'s metrics, logged as `eval_exact_match`, ...

The scores are added inside `evaluation_loop`, so they are in the metrics dict the Trainer logs (trainer_state.json,
the progress log, TensorBoard / W&B), passes to callbacks (EarlyStoppingCallback) and compares for
`metric_for_best_model` + `load_best_model_at_end`. With several processes each rank answers its shard of the
subset and the answers are gathered, so every rank computes the same scores.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from trl import SFTTrainer

from vlm_sft.evaluation.generate import eval_set_from_dataset, generate_answers
from vlm_sft.evaluation.metrics import flat_metrics, score

logger = logging.getLogger(__name__)


def scored_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of the rows scored: all of them, or `limit` drawn with `seed` (sorted; the same at every eval)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


class GenerationScorer:
    """Answers the eval subset with the model being trained and scores the answers.

    Args:
        dataset: The validated eval Dataset (rows with `messages` and `images`), before the Trainer touches it.
        processor: The processor training renders with (its chat template).
        limit: Score this many rows (a fixed, seeded subset); None scores all.
        max_new_tokens: Generation budget per answer.
        batch_size: Answers generated at once per process.
        seed: Seed of the subset.
    """

    def __init__(
        self,
        dataset: Any,
        processor: Any,
        *,
        limit: int | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        seed: int = 42,
    ) -> None:
        indices = scored_subset(len(dataset), limit, seed)
        self.eval_set = eval_set_from_dataset(dataset.select(indices), "eval set")
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def __call__(self, model: Any, accelerator: Any, prefix: str = "eval") -> dict[str, float]:
        """Generate on this rank's shard, gather, score: `{prefix}_exact_match`, ..., `{prefix}_generate_seconds`."""
        from accelerate.utils import gather_object

        rank, world = accelerator.process_index, accelerator.num_processes
        rows = self.eval_set.rows
        mine = list(range(rank, len(rows), world))  # strided shards: every rank gets a similar mix
        start = time.perf_counter()
        was_training = model.training
        answers = generate_answers(
            model,
            self.processor,
            [rows[i] for i in mine],
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
        )
        model.train(was_training)
        pairs = [(i, a) for i, a in zip(mine, answers, strict=True)]
        if world > 1:
            pairs = gather_object(pairs)
        ordered = [a for _, a in sorted(pairs)]
        seconds = time.perf_counter() - start
        summary, _ = score(ordered, self.eval_set.references)
        metrics = flat_metrics(summary, prefix)
        metrics[f"{prefix}_generate_seconds"] = round(seconds, 2)
        if accelerator.is_main_process:
            print(
                f"scored {len(rows)} eval answers by generation in {seconds:.1f} s: "
                + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not k.endswith("_seconds"))
            )
        return metrics


class ScoredSFTTrainer(SFTTrainer):
    """`trl.SFTTrainer` that adds generation scores to every evaluation (when given a scorer) and builds the
    optimizer from per-part learning rates (when given a `vlm_sft.training.optimizer.PartLearningRates`)."""

    def __init__(self, *args: Any, scorer: GenerationScorer | None = None, part_lrs: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.scorer = scorer
        self.part_lrs = part_lrs

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kwargs):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kwargs)
        if self.scorer is not None and description == "Evaluation":
            prefix = kwargs.get("metric_key_prefix", "eval")
            model = self.accelerator.unwrap_model(self.model)  # DDP's wrapper has no generate()
            # Accelerate's mixed precision wraps only the prepared model's forward, which generate() bypasses: a
            # 4-bit base in bf16 feeding an fp32 projector needs the same autocast here.
            with self.accelerator.autocast():
                output.metrics.update(self.scorer(model, self.accelerator, prefix))
        return output

    def create_optimizer(self, model=None):
        if self.part_lrs is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        decay = set(self.get_decay_parameter_names(opt_model))
        self.optimizer = self.part_lrs.build(opt_model, optimizer_cls, optimizer_kwargs, decay)
        return self.optimizer


def kept_step(state: Any, args: Any, early_stopping_patience: int | None = None) -> dict:
    """Which step's adapter is the run's result, and why: for training_summary.json and the model card."""
    # EarlyStoppingCallback stops before max_steps; a run that ran its course ends at max_steps.
    stopped = bool(early_stopping_patience) and state.global_step < state.max_steps
    if not args.load_best_model_at_end or state.best_model_checkpoint is None:
        reason = "the last step (no load_best_model_at_end)"
        reason += f"; stopped early at step {state.global_step}" if stopped else ""
        return {"step": state.global_step, "metric": None, "value": None, "early_stopped": stopped, "reason": reason}
    metric = args.metric_for_best_model
    metric = metric if metric.startswith("eval_") else f"eval_{metric}"
    best_step = state.best_global_step or int(str(state.best_model_checkpoint).rsplit("-", 1)[-1])
    evaluations = [e for e in state.log_history if metric in e]
    better = "highest" if args.greater_is_better else "lowest"
    return {
        "step": best_step,
        "metric": metric,
        "value": state.best_metric,
        "early_stopped": stopped,
        "final_step": state.global_step,
        "evaluations": len(evaluations),
        "reason": f"{better} {metric} ({state.best_metric:.4g}) of {len(evaluations)} evaluations"
        + (f"; stopped early at step {state.global_step}" if stopped else ""),
    }

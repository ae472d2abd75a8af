"""GPU check: the precision matrix (quantization x mixed precision x dtype x 4-bit storage) through the real trainer.

    python benchmarks/gpu_precision.py --out benchmarks/results/gpu_precision.json   # on a GPU, about 2-4 minutes
    python benchmarks/gpu_precision.py --cpu --only 4-bit/no/float32 none/fp16/float32  # CPU smoke run

Every combination runs `vlm_sft.training.train.main` (the command users run) on the tiny LLaVA and
the digits, built locally (no download), for a few optimizer steps: quantization none / 8-bit /
4-bit, mixed precision bf16 / fp16 / none, dtype bfloat16 / float16 / float32, 4-bit storage equal
to dtype (what ZeRO-3 / FSDP need). The row `4-bit/fp16/float16` is the documented T4/V100 path
(`--dtype float16 --bnb_4bit_quant_storage float16 --bf16 false --fp16 true`). A row records whether
the step worked (exit 0), was refused before loading (exit 2, its message), or failed (the exception);
the logged losses and whether they are finite; and peak GPU memory. The CPU rows are in `make test`
(tests/test_precision.py); what only a GPU can answer is fp16 autocast with its loss scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QUANT = {"none": [], "8-bit": ["--load_in_8bit", "true"], "4-bit": ["--load_in_4bit", "true"]}
DTYPES = ("bfloat16", "float16", "float32")
COMBOS = [f"{q}/{mp}/{dt}" for q in QUANT for mp in ("bf16", "fp16", "no") for dt in DTYPES]


def combo_args(combo: str) -> list[str]:
    quant, mp, dtype = combo.split("/")
    args = [*QUANT[quant], "--dtype", dtype, "--bf16", str(mp == "bf16").lower(), "--fp16", str(mp == "fp16").lower()]
    return args + (["--bnb_4bit_quant_storage", dtype] if quant == "4-bit" else [])


def run_combo(combo: str, base: list[str], out: Path, cpu: bool) -> dict:
    """One training run in-process; the row for the table."""
    from vlm_sft.training.train import main

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stderr = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            rc = main([*base, "--output_dir", str(out), "--use_cpu", str(cpu).lower(), *combo_args(combo)])
        error = next((line for line in stderr.getvalue().splitlines() if line.startswith("error: ")), None)
    except Exception as exc:  # a dtype traceback is the finding this script exists to catch
        rc, error = "exception", f"{type(exc).__name__}: {str(exc)[:300]}"
    seconds = round(time.perf_counter() - start, 1)
    row = {"combo": combo, "args": " ".join(combo_args(combo)), "exit": rc, "seconds": seconds}
    state = out / "trainer_state.json"
    if rc == 0 and state.exists():
        losses = [h["loss"] for h in json.loads(state.read_text())["log_history"] if "loss" in h]
        row.update(losses=losses, loss_finite=bool(losses) and all(math.isfinite(x) for x in losses))
    if error:
        row["error"] = error
    if torch.cuda.is_available():
        row["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| quantization / mixed precision / dtype | result | losses finite | peak MiB |", "|---|---|---|---:|"]
    for r in rows:
        result = {0: "trains", 2: "refused: " + (r.get("error") or "")[7:90]}.get(r["exit"], r.get("error", "failed"))
        finite = {True: "yes", False: "**no**"}.get(r.get("loss_finite"), "-")
        lines.append(f"| {r['combo']} | {result} | {finite} | {r.get('peak_mib', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=COMBOS, default=COMBOS, metavar="QUANT/MP/DTYPE")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="run on CPU (smoke test: fp16 rows are refused there)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    from vlm_sft.quickstart.digits import write_digits_dataset
    from vlm_sft.quickstart.tiny_model import build_tiny_llava

    work = Path(tempfile.mkdtemp(prefix="gpu_precision_"))
    model, digits = build_tiny_llava(work / "tiny-llava"), write_digits_dataset(work / "digits")
    train = work / "train.json"
    train.write_text(json.dumps(json.loads(Path(digits["train"]).read_text())[:32]))
    base = [str(REPO / "recipes/quickstart.yaml"), "--model_name_or_path", str(model), "--eval_file", ""]
    base += ["--train_file", str(train), "--image_dir", str(digits["image_dir"]), "--max_steps", str(args.steps)]
    base += ["--per_device_train_batch_size", "8", "--logging_steps", "1", "--overwrite_output_dir", "true"]
    rows = []
    for combo in args.only:
        rows.append(run_combo(combo, base, work / "out", args.cpu))
        print(json.dumps(rows[-1]), flush=True)
    device = "CPU" if args.cpu or not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(markdown(rows))
    if args.out:
        summary = {"device": device, "machine": platform.machine(), "torch": torch.__version__, "rows": rows}
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

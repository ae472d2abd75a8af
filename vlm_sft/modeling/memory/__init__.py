"""Training-memory estimate for (Q)LoRA on a vision-language model: arithmetic from its config and the recipe.

shapes.py reads the model off its config (built on the meta device), recipe.py the recipe values that matter,
terms.py turns both into bytes per part (see its docstring for the accounting), report.py prints them.
"""

from vlm_sft.modeling.memory.recipe import (
    DTYPE_BYTES,
    LORA_PRESETS,
    GiB,
    TrainingSetup,
    recipe_values,
    setup_from_recipe,
)
from vlm_sft.modeling.memory.report import format_report
from vlm_sft.modeling.memory.shapes import Block, Matrix, ModelShape, TextDims, VisionDims
from vlm_sft.modeling.memory.terms import (
    CPU_LOSS_FP32_BYTES,
    CUDA_CONTEXT_BYTES,
    TOKEN_CHUNK,
    VOCAB_CHUNK,
    Estimate,
    Line,
    Phases,
    activation_phases,
    compute_dtype,
    estimate,
    lesson_formula,
    lora_params,
    lora_targets,
    quant_constants_bytes,
    quantized_numel,
)

__all__ = [
    "CPU_LOSS_FP32_BYTES",
    "CUDA_CONTEXT_BYTES",
    "DTYPE_BYTES",
    "LORA_PRESETS",
    "TOKEN_CHUNK",
    "VOCAB_CHUNK",
    "Block",
    "Estimate",
    "GiB",
    "Line",
    "Matrix",
    "ModelShape",
    "Phases",
    "TextDims",
    "TrainingSetup",
    "VisionDims",
    "activation_phases",
    "compute_dtype",
    "estimate",
    "format_report",
    "lesson_formula",
    "lora_params",
    "lora_targets",
    "quant_constants_bytes",
    "quantized_numel",
    "recipe_values",
    "setup_from_recipe",
]

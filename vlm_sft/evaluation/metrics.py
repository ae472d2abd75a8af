"""Scores for generated answers: exact match, token F1, JSON validity and per-field accuracy, numeric accuracy and MAE.

Each reference decides how it is scored beyond exact match and F1 (`answer_kind`):

- `json`: the reference parses as a JSON object -> is the prediction a JSON object, and which of the
  reference's fields does it get right (`values_equal`, the same rule at every depth);
- `numeric`: the reference is a signed number, optionally with a unit ("4", "30 psi", "−2.5 °C") ->
  is the first number in the prediction within tolerance of it, with the same unit (`UNIT_SPELLINGS`),
  and by how much it is off;
- `text`: everything else, scored by exact match and token F1 only.

Rules (the README lists them with examples):

- Text is compared after `normalize`: case, whitespace, sentence punctuation at the end (`. , ! ?`) and
  quotes around the whole answer do not count; brackets, braces, `+`, `%` always do (`C` is not `C++`).
- Numbers keep their sign in every score; the Unicode minus `−` is a minus.
- In JSON, `false` is not `0` and `[0, 1]` is not `[false, true]`, at any depth; strings compare as text.

Pure Python, no model: every rule here is tested on crafted examples (tests/test_metrics.py).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

# Only sentence punctuation ends an answer without meaning anything; `%`, `+`, `)`, `}` change it.
_SENTENCE_END = ".,!? "
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}
_MINUS = "\u2212"  # "−", the typographic minus, read as "-"
# A number as people write them: sign, thousands separators, decimals ("1,200", "-3.5", ".5").
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w.])[-+]?\.\d+")
_UNIT_PATTERN = r"%|℃|℉|[°µ]?[a-zµ]+(?:/[a-z]+)?|°"
# The reference is numeric when it is a number and at most a short unit: "4", "30 psi", "12.5 %", "20°c".
_NUMERIC_ANSWER = re.compile(rf"^\s*({_NUMBER.pattern})\s*({_UNIT_PATTERN})?\.?\s*$")
# The unit written right after a number in an answer ("30 psi", "320°C", "12 %").
_UNIT_AFTER = re.compile(rf"\s*({_UNIT_PATTERN})")
# Counts are often written as words ("There are four screws").
_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
_WORDS += "seventeen eighteen nineteen twenty"
NUMBER_WORDS = {w: i for i, w in enumerate(_WORDS.split())}
_WORD_IN_TEXT = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")
_CODE_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)

# Spellings of one unit that count as the same unit (lower case). Any other unit must be spelled alike,
# ignoring a plural "s" ("4 screw" = "4 screws"). Units are never converted: "30 kPa" is not "30 psi".
UNIT_SPELLINGS: tuple[tuple[str, ...], ...] = (
    ("%", "percent", "pct"),
    ("°c", "℃", "c", "degc", "celsius"),
    ("°f", "℉", "f", "degf", "fahrenheit"),
    ("°", "deg", "degree", "degrees"),
    ("k", "kelvin"),
    ("psi",),
    ("kpa",),
    ("pa", "pascal", "pascals"),
    ("bar", "bars"),
    ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    ("m", "meter", "meters", "metre", "metres"),
    ("km", "kilometer", "kilometers", "kilometre", "kilometres"),
    ("µm", "um", "micron", "microns", "micrometer", "micrometers"),
    ("in", "inch", "inches"),
    ("ft", "foot", "feet"),
    ("g", "gram", "grams"),
    ("kg", "kgs", "kilogram", "kilograms"),
    ("mg", "milligram", "milligrams"),
    ("lb", "lbs", "pound", "pounds"),
    ("l", "liter", "liters", "litre", "litres"),
    ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    ("s", "sec", "secs", "second", "seconds"),
    ("ms", "millisecond", "milliseconds"),
    ("min", "mins", "minute", "minutes"),
    ("h", "hr", "hrs", "hour", "hours"),
    ("rpm", "rev/min"),
    ("hz", "hertz"),
    ("v", "volt", "volts"),
    ("a", "amp", "amps", "ampere", "amperes"),
    ("w", "watt", "watts"),
    ("kw", "kilowatt", "kilowatts"),
    ("km/h", "kph", "kmh"),
    ("m/s", "mps"),
    ("mph",),
)
_UNIT_CANON = {spelling: group[0] for group in UNIT_SPELLINGS for spelling in group}


def _unminus(text: str) -> str:
    return text.replace(_MINUS, "-")


def normalize(text: str) -> str:
    """Case, surrounding and repeated whitespace, sentence punctuation at the end, and quotes around it all do not
    count; every other character does (`{"a": 1` is not `{"a": 1}`, `C` is not `C++`, `50` is not `50%`)."""
    text = re.sub(r"\s+", " ", _unminus(text).strip().lower())
    while True:
        before = text
        text = text.rstrip(_SENTENCE_END)
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after `normalize`."""
    return normalize(prediction) == normalize(reference)


def _token(word: str) -> str:
    """A word without punctuation around it; a number keeps its minus sign ("(-2.5)" -> "-2.5", "+2.5" -> "2.5")."""
    word = word.rstrip(string.punctuation)
    core = word.lstrip(string.punctuation)
    if core[:1].isdigit() and word[: len(word) - len(core)].endswith("-"):
        return "-" + core
    return core


def tokens(text: str) -> list[str]:
    """Lower-cased words with punctuation stripped from both ends ("psi," -> "psi"), signs of numbers kept."""
    words = (_token(w) for w in normalize(text).split())
    return [w for w in words if w]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over the multiset of words: 1.0 when both are empty, 0.0 when only one is."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def parse_json(text: str) -> Any | None:
    """The JSON value in `text` (a ```json fence around it is allowed), or None when it is not valid JSON."""
    text = text.strip()
    fenced = _CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_quantity(text: str) -> tuple[float, str | None] | None:
    """(first number, the unit written right after it or None) in `text`; a number word counts ("four" -> 4.0).

    "−2 °C" -> (-2.0, "°c"); "1,200 rpm" -> (1200.0, "rpm"); "no number here" -> None.
    """
    text = _unminus(text).lower()
    match = _NUMBER_IN_TEXT.search(text)
    if match:
        value = float(match.group(0).replace(",", ""))
    else:
        match = _WORD_IN_TEXT.search(text)
        if not match:
            return None
        value = float(NUMBER_WORDS[match.group(1)])
    unit = _UNIT_AFTER.match(text, match.end())
    return value, unit.group(1) if unit else None


def parse_number(text: str) -> float | None:
    """The first number in `text` ("1,200" -> 1200.0, "−3" -> -3.0), else the first number word, else None."""
    quantity = parse_quantity(text)
    return quantity[0] if quantity else None


def same_unit(got: str | None, expected: str | None) -> bool:
    """True when the reference has no unit, or the answer writes the same one (`UNIT_SPELLINGS`, plural "s" aside)."""
    if expected is None:
        return True
    if got is None:
        return False

    def canon(unit: str) -> str:
        return _UNIT_CANON.get(unit) or _UNIT_CANON.get(unit.removesuffix("s")) or unit.removesuffix("s")

    return canon(got) == canon(expected)


def answer_kind(reference: str) -> str:
    """How a reference is scored beyond exact match and F1: `json`, `numeric` or `text`."""
    if isinstance(parse_json(reference), dict):
        return "json"
    match = _NUMERIC_ANSWER.match(normalize(reference))
    if match and re.search(r"\d", match.group(1)):
        return "numeric"
    return "text"


def values_equal(predicted: Any, expected: Any, tolerance: float = 0.0) -> bool:
    """One rule at every depth of a JSON value: booleans only equal booleans (`false` is not `0`), numbers within
    tolerance, strings after `normalize`, objects key by key (same keys), arrays item by item (same length)."""
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return predicted is expected
    if isinstance(expected, int | float) and isinstance(predicted, int | float):
        return _close(float(predicted), float(expected), tolerance)
    if isinstance(expected, str) and isinstance(predicted, str):
        return normalize(predicted) == normalize(expected)
    if isinstance(expected, dict) and isinstance(predicted, dict):
        return predicted.keys() == expected.keys() and all(
            values_equal(predicted[k], v, tolerance) for k, v in expected.items()
        )
    if isinstance(expected, list) and isinstance(predicted, list):
        return len(predicted) == len(expected) and all(
            values_equal(p, e, tolerance) for p, e in zip(predicted, expected, strict=True)
        )
    return predicted is None and expected is None


def _close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance or math.isclose(a, b, rel_tol=1e-9)


def score_example(prediction: str, reference: str, *, tolerance: float = 0.0) -> dict:
    """Every score one example gets; `score` (0..1) is its kind's headline, used to rank the worst examples."""
    kind = answer_kind(reference)
    result: dict[str, Any] = {
        "kind": kind,
        "exact_match": exact_match(prediction, reference),
        "token_f1": token_f1(prediction, reference),
    }
    if kind == "json":
        expected, got = parse_json(reference), parse_json(prediction)
        got_fields = got if isinstance(got, dict) else {}  # a list, a number or null has no fields to match
        fields = {k: k in got_fields and values_equal(got_fields[k], v, tolerance) for k, v in expected.items()}
        # The reference is an object, so only an object is a valid answer ("4" and "null" are not).
        result.update(json_valid=isinstance(got, dict), fields=fields)
        result["score"] = sum(fields.values()) / len(fields) if fields else float(got == expected)
    elif kind == "numeric":
        (expected_n, expected_unit), got = parse_quantity(reference), parse_quantity(prediction)
        got_n, got_unit = got if got else (None, None)
        result["unit_ok"] = got is not None and same_unit(got_unit, expected_unit)
        # A number in another unit is not comparable ("30 kPa" vs "30 psi"), so it has no error either.
        result.update(number=got_n, abs_error=abs(got_n - expected_n) if result["unit_ok"] else None)
        result["numeric_correct"] = result["unit_ok"] and _close(got_n, expected_n, tolerance)
        result["score"] = float(result["numeric_correct"])
    else:
        result["score"] = result["token_f1"]
    return result


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(examples: Sequence[dict]) -> dict:
    """Summary metrics over `score_example` results; a section is None when no reference is of its kind.

    JSON: `valid_rate` counts predictions that parse; `field_accuracy` is the share of all reference fields
    (over all JSON examples) matched, and `per_field` the same per key. Numeric: `accuracy` is over all
    numeric examples (a prediction without a number, or in another unit, is wrong); `mae` only over predictions
    that have a number in the reference's unit, so `parsed_rate` says how many that is.
    """
    summary: dict[str, Any] = {
        "n": len(examples),
        "exact_match": _mean([float(e["exact_match"]) for e in examples]) or 0.0,
        "token_f1": _mean([e["token_f1"] for e in examples]) or 0.0,
        "kinds": dict(Counter(e["kind"] for e in examples)),
        "json": None,
        "numeric": None,
    }
    as_json = [e for e in examples if e["kind"] == "json"]
    if as_json:
        per_field: dict[str, list[bool]] = {}
        for e in as_json:
            for key, ok in e["fields"].items():
                per_field.setdefault(key, []).append(ok)
        all_fields = [ok for oks in per_field.values() for ok in oks]
        summary["json"] = {
            "n": len(as_json),
            "valid_rate": _mean([float(e["json_valid"]) for e in as_json]),
            "field_accuracy": _mean([float(ok) for ok in all_fields]),
            "per_field": {k: _mean([float(ok) for ok in oks]) for k, oks in sorted(per_field.items())},
        }
    numeric = [e for e in examples if e["kind"] == "numeric"]
    if numeric:
        errors = [e["abs_error"] for e in numeric if e["abs_error"] is not None]
        summary["numeric"] = {
            "n": len(numeric),
            "accuracy": _mean([float(e["numeric_correct"]) for e in numeric]),
            "mae": _mean(errors),
            "parsed_rate": len(errors) / len(numeric),
        }
    return summary


def score(predictions: Sequence[str], references: Sequence[str], *, tolerance: float = 0.0) -> tuple[dict, list[dict]]:
    """(summary, per-example scores) for paired predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; expected one each.")
    examples = [score_example(p, r, tolerance=tolerance) for p, r in zip(predictions, references, strict=True)]
    return aggregate(examples), examples


# The headline numbers shown side by side (label, path into the summary, higher is better).
HEADLINE: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("exact match", ("exact_match",), True),
    ("token F1", ("token_f1",), True),
    ("JSON valid", ("json", "valid_rate"), True),
    ("JSON field accuracy", ("json", "field_accuracy"), True),
    ("numeric accuracy", ("numeric", "accuracy"), True),
    ("numeric MAE", ("numeric", "mae"), False),
    ("numeric parsed", ("numeric", "parsed_rate"), True),
)


def headline_value(summary: dict, path: tuple[str, ...]) -> float | None:
    """summary[path[0]][path[1]]..., or None where a section is absent (no reference of that kind)."""
    value: Any = summary
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value


# Flat names (logged with an `eval_` prefix during training) of the headline metrics, by their summary path.
FLAT_NAMES: dict[tuple[str, ...], str] = {
    ("exact_match",): "exact_match",
    ("token_f1",): "token_f1",
    ("json", "valid_rate"): "json_valid",
    ("json", "field_accuracy"): "json_field_accuracy",
    ("numeric", "accuracy"): "numeric_accuracy",
    ("numeric", "mae"): "numeric_mae",
    ("numeric", "parsed_rate"): "numeric_parsed",
}
LOWER_IS_BETTER = frozenset(FLAT_NAMES[path] for _, path, higher in HEADLINE if not higher)


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """`aggregate`'s summary as flat `{prefix}_name: value`; sections with no reference of their kind left out."""
    out = {}
    for path, name in FLAT_NAMES.items():
        value = headline_value(summary, path)
        if value is not None:
            out[f"{prefix}_{name}"] = float(value)
    return out

"""vlm_sft.evaluation.metrics on crafted answers: every number worked out by hand."""

from __future__ import annotations

import pytest

from vlm_sft.evaluation.metrics import (
    aggregate,
    answer_kind,
    exact_match,
    parse_json,
    parse_number,
    score,
    score_example,
    token_f1,
)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Seven.", "seven", True),
        ("  4 ", "4", True),
        ("A  red\n cup!", "a red cup", True),
        ("4?!", "4", True),
        ("Yes, it is on", "yes it is on", False),  # inner punctuation counts; only trailing is dropped
        ("7", "1", False),
    ],
)
def test_exact_match_normalises_case_whitespace_and_trailing_punctuation(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


def test_token_f1_by_hand():
    assert token_f1("the red cup", "red cup") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # 0.8
    assert token_f1("a a a", "a") == pytest.approx(0.5)  # overlap is a multiset: one "a" of three
    assert token_f1("Yes, it is on.", "yes it is on") == 1.0  # punctuation around words does not count
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "red") == 0.0 and token_f1("red", "") == 0.0


@pytest.mark.parametrize(
    ("reference", "kind"),
    [
        ('{"gripper": "closed", "holding_object": false}', "json"),
        ('```json\n{"count": 3}\n```', "json"),
        ("[1, 2]", "text"),  # per-field accuracy needs fields: only objects are scored as JSON
        ("4", "numeric"),
        ("30 psi", "numeric"),
        ("-2.5 °C", "numeric"),
        ("1,200 rpm", "numeric"),
        ("There are 4 screws in the tray.", "text"),
        ("from 20 to 80 psi", "text"),
        ("yes", "text"),
    ],
)
def test_answer_kind(reference, kind):
    assert answer_kind(reference) == kind


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("4", 4.0),
        ("There are four screws.", 4.0),
        ("1,200 rpm", 1200.0),
        ("-3.5 degrees", -3.5),
        ("320°C", 320.0),
        ("reads 30 psi, between 20 and 80", 30.0),  # the first number
        ("bench_21", None),  # digits inside a word are not a reading
        ("no number here", None),
    ],
)
def test_parse_number(text, number):
    assert parse_number(text) == number


def test_parse_json_accepts_fences_and_refuses_non_json():
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json(' {"a": [1, 2]} ') == {"a": [1, 2]}
    assert parse_json('{"a": 1') is None and parse_json("gripper: closed") is None


def test_json_fields_compared_by_value():
    reference = '{"gripper": "closed", "holding_object": false, "count": 3}'
    got = score_example('{"gripper": "Closed", "holding_object": 0, "count": 3.0}', reference)
    # strings after normalisation, numbers numerically, and 0 is not false
    assert got["json_valid"] and got["fields"] == {"gripper": True, "holding_object": False, "count": True}
    assert got["score"] == pytest.approx(2 / 3) and not got["exact_match"]
    broken = score_example('{"gripper": "closed", ', reference)
    assert not broken["json_valid"] and not any(broken["fields"].values()) and broken["score"] == 0.0
    wrong_type = score_example('["closed"]', reference)
    assert not wrong_type["json_valid"] and wrong_type["score"] == 0.0  # JSON, but not the object asked for


def test_numeric_accuracy_tolerance_and_error():
    assert score_example("31 psi", "30 psi")["abs_error"] == 1.0
    assert not score_example("31 psi", "30 psi")["numeric_correct"]
    assert score_example("31 psi", "30 psi", tolerance=1.0)["numeric_correct"]
    assert score_example("It reads thirty", "30")["abs_error"] is None  # no number found: wrong, no error


def test_aggregate_on_a_mixed_set():
    references = [
        '{"gripper": "closed", "holding_object": false}',  # json
        '{"gripper": "open", "holding_object": true}',  # json
        "4",  # numeric
        "30 psi",  # numeric
        "12",  # numeric
        "The iron is on.",  # text
    ]
    predictions = [
        '{"gripper": "closed", "holding_object": false}',  # valid, 2/2 fields, exact
        '{"gripper": "closed"}',  # valid, 0/2 fields (gripper wrong, holding_object missing)
        "4",  # right
        "about 34 psi",  # off by 4
        "many",  # no number: wrong, not in the MAE
        "the iron is on",  # exact after normalisation
    ]
    summary, examples = score(predictions, references)
    assert [e["kind"] for e in examples] == ["json", "json", "numeric", "numeric", "numeric", "text"]
    assert summary["n"] == 6 and summary["kinds"] == {"json": 2, "numeric": 3, "text": 1}
    assert summary["exact_match"] == pytest.approx(3 / 6)
    assert summary["json"] == {
        "n": 2,
        "valid_rate": 1.0,
        "field_accuracy": pytest.approx(2 / 4),
        "per_field": {"gripper": 0.5, "holding_object": 0.5},
    }
    assert summary["numeric"]["accuracy"] == pytest.approx(1 / 3)
    assert summary["numeric"]["mae"] == pytest.approx((0 + 4) / 2)
    assert summary["numeric"]["parsed_rate"] == pytest.approx(2 / 3)
    assert summary["token_f1"] == pytest.approx(sum(e["token_f1"] for e in examples) / 6)


def test_sections_absent_when_no_reference_has_that_kind():
    summary = aggregate([score_example("red", "red")])
    assert summary["json"] is None and summary["numeric"] is None and summary["exact_match"] == 1.0


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score(["a", "b"], ["a"])


# ---- Issue #19: one rule at every depth, sentence punctuation only, signs, units, JSON objects.


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ('{"a": {"b": false}}', '{"a": {"b": 0}}'),  # false is not 0, one level down too
        ('{"a": [false, true]}', '{"a": [0, 1]}'),  # nor in an array
        ('{"a": [1]}', '{"a": [1, 2]}'),  # arrays compare item by item, same length
        ('{"a": {"b": 1, "c": 2}}', '{"a": {"b": 1}}'),  # objects have the same keys
    ],
)
def test_nested_json_values_follow_the_top_level_rule_wrong(prediction, reference):
    assert score_example(prediction, reference)["fields"] == {"a": False}


def test_nested_json_strings_compare_as_text_at_every_depth():
    assert score_example('{"a": "Open"}', '{"a": "open"}')["fields"] == {"a": True}
    assert score_example('{"a": {"b": "Open"}}', '{"a": {"b": "open"}}')["fields"] == {"a": True}
    assert score_example('{"a": ["Open", 2.0]}', '{"a": ["open", 2]}')["fields"] == {"a": True}


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ('{"a": 1', '{"a": 1}', False),  # a truncated object is not the object
        ("C", "C++", False),
        ("50", "50%", False),
        ("(4", "(4)", False),
        ('"Seven."', "seven", True),  # quotes around the whole answer and a full stop do not count
        ("“seven”", "seven", True),
        ("seven!", '"seven"', True),
    ],
)
def test_exact_match_strips_sentence_punctuation_only(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


def test_token_f1_keeps_the_sign_of_numbers():
    assert token_f1("-2.5 °C", "2.5 °C") == pytest.approx(0.5)
    assert token_f1("\u22122.5 °C", "-2.5 °C") == 1.0  # the Unicode minus is a minus
    assert token_f1("+2.5", "2.5") == 1.0 and token_f1("(-3)", "-3") == 1.0


@pytest.mark.parametrize(
    ("reference", "kind"),
    [("4.", "numeric"), ("\u22122 °C", "numeric"), ("50%.", "numeric"), ("C++", "text")],
)
def test_answer_kind_after_sentence_punctuation_and_unicode_minus(reference, kind):
    assert answer_kind(reference) == kind


def test_numeric_units_must_match_with_equivalent_spellings():
    assert not score_example("30 psi", "30 kPa")["numeric_correct"]
    assert score_example("30 psi", "30 kPa")["abs_error"] is None  # another unit: not comparable
    assert not score_example("30", "30 kPa")["numeric_correct"]  # the reference's unit is part of the answer
    assert score_example("It reads 30 KPA.", "30 kPa")["numeric_correct"]
    assert score_example("−2 ℃", "-2 °C")["numeric_correct"]
    assert score_example("-2 degrees celsius", "−2 °C")["numeric_correct"] is False  # "degrees" is not °C
    assert score_example("12 percent", "12%")["numeric_correct"]
    assert score_example("four screws", "4 screw")["numeric_correct"]
    assert not score_example("2 °C", "−2 °C")["numeric_correct"]  # the sign counts
    assert score_example("4 screws", "4")["numeric_correct"]  # no unit in the reference: none needed


def test_json_validity_for_an_object_reference_means_an_object():
    reference = '{"a": 1}'
    assert not score_example("4", reference)["json_valid"]
    assert not score_example("null", reference)["json_valid"]
    assert not score_example("[1]", reference)["json_valid"]
    assert score_example('{"b": 2}', reference)["json_valid"]

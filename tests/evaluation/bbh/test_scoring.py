"""Answer extraction and exact match reproduce lm-eval 0.4.13 (zeroshot/utils.py filters, api/metrics.py).

Readable examples of the behaviour; the exhaustive check against lm-eval's own outputs is
test_lm_eval_fixtures.py.
"""

from __future__ import annotations

import pytest

from kallm.errors import KallmError
from kallm.evaluation.bbh import score_output
from kallm.evaluation.bbh.filters import (
    FLEXIBLE,
    INVALID,
    cot_extract,
    flexible_extract,
    number_filter,
    words_to_number,
    zeroshot_match,
)
from kallm.evaluation.bbh.scoring import extract_answers
from kallm.evaluation.bbh.tasks import TASKS

DATE_Q = ("Today is Christmas Eve of 1937. What is the date tomorrow in MM/DD/YYYY?\nOptions:\n(A) 12/11/1937\n"
          "(B) 12/25/1937\n(C) 01/04/1938\n(D) 12/04/1937\n(E) 12/25/2006\n(F) 07/25/1937")
SORT_Q = "Sort the following words alphabetically: List: oven costume counterpart"


def test_every_task_has_a_flexible_filter():
    assert set(FLEXIBLE) == set(TASKS.names()) and len(FLEXIBLE) == 27


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" (B)", "(B)"),
        ("The answer is (B).", "(B)"),
        ("(B) because it is the day after", "(B)"),
        ("(C) no wait (B)", "(C)"),  # first match, as group_select 0
        ("12/25/1937", "(B)"),  # option text mapped to its letter
        ("The date is 12/25/1937.", "(B)"),
        ("answer: B", "(B)"),  # bare letter after a colon
        ("b", INVALID),  # a bare lower-case letter is not extracted by lm-eval
        ("I do not know", INVALID),
    ],
)
def test_multiple_choice_extraction(output, expected):
    assert flexible_extract("date_understanding", output, DATE_Q) == expected


@pytest.mark.parametrize(
    ("task", "output", "expected"),
    [
        ("boolean_expressions", " False, because not True is False", "False"),
        ("boolean_expressions", "true", INVALID),  # case-sensitive regex
        ("causal_judgement", "\nNo, he did not.", "No"),
        ("navigate", "yes", "yes"),
        ("formal_fallacies", " The argument is invalid.", "invalid"),
        ("sports_understanding", "It is not plausible.", "no"),
        ("sports_understanding", "Yes, that is plausible", "yes"),
        ("sports_understanding", "maybe", INVALID),
        # lm-eval maps web_of_lies phrases to lower case; its metric ignores case, so "Yes" still scores.
        ("web_of_lies", "Sherrie does not tell the truth.", "no"),
        ("web_of_lies", "So Jim tells the truth", "yes"),
        ("object_counting", "I count 12 objects", "12"),
        ("object_counting", "There are twenty one items.", "21"),
        ("object_counting", "1,234", "1"),  # lm-eval takes the first integer: commas split numbers
        ("multistep_arithmetic_two", " -219", "-219"),
        ("object_counting", "none", "1"),  # no word boundaries in lm-eval's number-word regex: n-one
        ("object_counting", "I cannot tell", INVALID),
        ("dyck_languages", " ] } ]", "] } ]"),
        ("word_sorting", "costume, counterpart and then oven", "costume counterpart oven"),
    ],
)
def test_flexible_extraction_by_answer_type(task, output, expected):
    assert flexible_extract(task, output, SORT_Q if task == "word_sorting" else None) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("one", 1), ("twenty one", 21), ("one hundred and five", 105), ("two thousand three", 2003),
     ("fourteen", 14), ("zero", 0),
     # word2number's own arithmetic, which lm-eval inherits: up to four words combine as a*b + c + d,
     # and a word with a comma attached is not a number word.
     ("one two three", 5), ("nineteen ninety", 109), ("one, two, three", 3), ("hundred thousand", 100000),
     ("two million twenty three thousand and forty nine", 2023049)],
)
def test_number_words_as_word2number(text, value):
    assert words_to_number(text) == value


@pytest.mark.parametrize("text", ["one thousand one thousand", "thousand million"])
def test_number_words_that_word2number_refuses_are_invalid(text):
    # word2number raises here, which stops an lm-eval run; kallm scores the output as invalid instead.
    assert words_to_number(text) is None
    assert flexible_extract("object_counting", text) == INVALID


def test_option_text_matches_longest_first():
    question = "Who is oldest?\nOptions:\n(A) Louis\n(B) Bernard\n(C) Louise"
    assert flexible_extract("penguins_in_a_table", "Louise", question) == "(C)"
    assert flexible_extract("penguins_in_a_table", "Louis", question) == "(A)"


def test_number_filter_prefers_digits():
    assert number_filter("seven or 8") == "8"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("He ends at the start. So the answer is Yes.", "Yes"),
        ("So the answer is (B).\n", "(B)"),
        ("the answer is 42.", "42"),
        ("The answer is (B).", INVALID),  # capital T: lm-eval's lookbehind is lower case
        ("no conclusion", INVALID),
    ],
)
def test_cot_extraction(output, expected):
    assert cot_extract(output) == expected


def test_zeroshot_metric_ignores_case_and_listed_characters():
    assert zeroshot_match("(b).", "(B)")
    assert zeroshot_match('"1,234"', "1234")
    assert zeroshot_match("True\n", "True")
    assert not zeroshot_match(" True", "True")  # spaces are not ignored
    assert not zeroshot_match("(B) because", "(B)")


@pytest.mark.parametrize(
    ("task", "output", "target", "question", "expected"),
    [
        ("date_understanding", "(B)", "(B)", DATE_Q, {"strict": True, "flexible": True, "stripped": True}),
        ("date_understanding", " (B)", "(B)", DATE_Q, {"strict": False, "flexible": True, "stripped": True}),
        ("date_understanding", "The answer is (B).", "(B)", DATE_Q,
         {"strict": False, "flexible": True, "stripped": False}),
        ("date_understanding", "b", "(B)", DATE_Q, {"strict": False, "flexible": False, "stripped": False}),
        ("boolean_expressions", "true.", "True", None, {"strict": True, "flexible": False, "stripped": True}),
        ("object_counting", "1,234", "1234", None, {"strict": True, "flexible": False, "stripped": True}),
        ("object_counting", "", "3", None, {"strict": False, "flexible": False, "stripped": False}),
    ],
)
def test_zeroshot_scores(task, output, target, question, expected):
    assert score_output(task, output, target, "zeroshot", question=question) == expected


def test_fewshot_strict_is_raw_exact_match():
    # The leading space every few-shot answer of SmolLM2 carries: lm-eval scores it wrong.
    assert score_output("date_understanding", " (C)", "(C)", "fewshot") == {
        "strict": False, "flexible": True, "stripped": True}
    assert score_output("sports_understanding", "Yes", "yes", "fewshot")["strict"] is False
    assert score_output("sports_understanding", "yes", "yes", "fewshot")["strict"] is True


def test_cot_scores():
    out = " Santi Cazorla is a soccer player. So the answer is no."
    assert score_output("sports_understanding", out, "no", "cot") == {"strict": True, "flexible": True,
                                                                      "stripped": True}
    assert score_output("sports_understanding", "He is a player.", "no", "cot")["strict"] is False
    assert extract_answers("sports_understanding", "He is a player.", "cot")["strict"] == INVALID


def test_unknown_task_in_scoring_suggests():
    with pytest.raises(KallmError, match="did you mean 'navigate'"):
        score_output("navigte", "Yes", "Yes", "zeroshot")

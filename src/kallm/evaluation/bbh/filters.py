"""lm-eval's BBH answer filters and exact-match metric, reproduced (lm-evaluation-harness 0.4.13).

Sources: `lm_eval/filters/extraction.py` (RegexFilter), `lm_eval/tasks/bbh/zeroshot/utils.py`
(MultiChoiceRegexFilter, MapRegexFilter, NumberParseRegexFilter, WordSortFilter), the per-task
`flexible-extract` entries of `lm_eval/tasks/bbh/zeroshot/*.yaml`, word2number 1.1 (numwords.py) and
`exact_match` in `lm_eval/api/metrics.py`. Quirks are kept on purpose (e.g. the first integer of "1,234" is
"1"), because the point is to score exactly as lm-eval does; tests/evaluation/bbh/fixtures holds lm-eval's own
extractions and scores of crafted outputs for every task, which these functions must reproduce.
The one difference: where word2number raises (lm-eval's run stops), kallm scores the output as invalid.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence

import regex as _regex  # lm-eval's number-word pattern needs branch reset groups `(?|...)`

from kallm.evaluation.bbh.numwords import NumberWordsError, word_to_num
from kallm.evaluation.bbh.tasks import GROUPS, MULTIPLE_CHOICE

log = logging.getLogger(__name__)

INVALID = "[invalid]"

# Zero-shot metric settings of `_zeroshot_template_yaml` (the few-shot and CoT templates comment them out).
ZEROSHOT_REGEXES_TO_IGNORE: tuple[str, ...] = (r"\.$", ",", r"\\", "\n", '"')

_PUNCT_TABLE = dict.fromkeys(i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))


def exact_match(prediction: str, reference: str, *, ignore_case: bool = False,
                regexes_to_ignore: Sequence[str] = ()) -> bool:
    """lm-eval's exact_match: the ignores apply to prediction and reference alike."""
    for pattern in regexes_to_ignore:
        prediction = re.sub(pattern, "", prediction)
        reference = re.sub(pattern, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    return prediction == reference


def zeroshot_match(prediction: str, reference: str) -> bool:
    return exact_match(prediction, reference, ignore_case=True, regexes_to_ignore=ZEROSHOT_REGEXES_TO_IGNORE)


def _find_match(pattern, resp: str, group_select: int = 0, convert: dict[str, str] | None = None):
    """ExtendedRegexFilter.find_match: first non-empty group of the selected match, stripped, then mapped."""
    found = pattern.findall(resp)
    if not found:
        return found  # an empty list: falsy, as in lm-eval
    match = found[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m][0]
    match = match.strip()
    if match and convert and match in convert:
        match = convert[match]
    return match


def _ignores(text: str, ignore_case: bool, ignore_punctuation: bool) -> str:
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT_TABLE)
    return text


def regex_filter(resp: str, pattern: str, group_select: int = 0) -> str:
    """RegexFilter (`function: regex`) followed by take_first."""
    found = re.findall(pattern, resp)
    if not found:
        return INVALID
    match = found[group_select]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        match = groups[0] if groups else INVALID  # 0.4.13: all groups empty gives the fallback
    return match.strip()


_OPTION_RE = re.compile(r"\([A-Z]\)([^\n^(]*)")


def multi_choice_filter(resp: str, question: str | None) -> str:
    """MultiChoiceRegexFilter: '(X)' first; else an option's text (case and punctuation ignored); else ': X'."""
    match = _find_match(re.compile(r"(\([A-Z]\))"), resp)
    if not match and question is not None:
        texts, to_letter, letters = [], {}, []
        for i, option in enumerate(_OPTION_RE.findall(question)):
            text = _ignores(option.strip(), True, True)
            letter = chr(ord("A") + i)
            texts.append(re.escape(text))
            to_letter[text] = f"({letter})"
            letters.append(letter)
        # Longest first, as lm-eval 0.4.13: an option text that starts another ("Louis", "Louise") must
        # not shadow it through leftmost-wins alternation.
        texts.sort(key=len, reverse=True)
        match = _find_match(re.compile("|".join(texts)), _ignores(resp, True, True), convert=to_letter)
        if not match:
            bare = re.compile(r":[\s]*(" + "|".join(letters) + ")")
            match = _find_match(bare, resp, convert={x: f"({x})" for x in letters})
    return match or INVALID


def map_regex_filter(resp: str, pattern_to_value: dict[str, str], ignore_case: bool = True) -> str:
    """MapRegexFilter: the first match of any pattern, mapped to the value of the pattern it matches."""
    whole = _find_match(re.compile("|".join(pattern_to_value)), _ignores(resp, ignore_case, False))
    match = None
    if whole:
        for pattern, value in pattern_to_value.items():
            match = _find_match(re.compile(pattern), _ignores(whole, ignore_case, False))
            if match:
                match = value
                break
    if not whole or not match:
        return INVALID
    return match


_NUMBER_WORDS_RE = _regex.compile(
    "((?:(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)|eight(?:|een|y)|ten|eleven"
    "|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion)(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|"
    "seven|nine)(?:|teen|ty)|eight(?|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion|[^\\S\r\n]|"
    ",|and|&)+)?(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)|eight(?|een|y)|ten|"
    "eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion))"
)


def words_to_number(text: str) -> int | float | None:
    """word2number's word_to_num on `text`; None where it raises (lm-eval's run would stop there)."""
    try:
        return word_to_num(text)
    except NumberWordsError as exc:
        log.warning("number words %r: word2number raises (%s), which stops lm-eval; scored as invalid", text, exc)
        return None


def number_filter(resp: str) -> str:
    """NumberParseRegexFilter with pattern ([-0-9]+): the first integer, else the first number in words."""
    match = _find_match(re.compile(r"([-0-9]+)"), resp)
    if not match:
        match = _find_match(_NUMBER_WORDS_RE, resp.lower())
        if match:
            value = words_to_number(match)
            match = str(value) if value is not None else ""
    return match or INVALID


def word_sort_filter(resp: str, question: str | None) -> str:
    """WordSortFilter: the words of the input list that the response mentions, in order of first mention."""
    if question is None or "List:" not in question:
        return resp
    words = question.split("List:")[1].strip().split()
    found = re.findall("|".join(rf"\b{w}\b" for w in words), resp)
    found.reverse()
    return " ".join(reversed(collections.OrderedDict(zip(found, [None] * len(found)))))


_YES_NO = r"\b(Yes|No|yes|no)\b"
_DYCK = r"(?<= )([\" \[\(<{}>\)\]]+)|([\" \[\(<{}>\)\]]+)"

FlexibleFilter = Callable[[str, "str | None"], str]


def _regex(pattern: str) -> FlexibleFilter:
    return lambda resp, question: regex_filter(resp, pattern)


# The `flexible-extract` filter of each task's zero-shot yaml.
FLEXIBLE: dict[str, FlexibleFilter] = {name: multi_choice_filter for name in GROUPS[MULTIPLE_CHOICE]}
FLEXIBLE.update({
    "boolean_expressions": _regex(r"\b(True|False)\b"),
    "causal_judgement": _regex(_YES_NO),
    "formal_fallacies": _regex(r"\b(valid|invalid)\b"),
    "navigate": _regex(_YES_NO),
    "sports_understanding": lambda resp, q: map_regex_filter(
        resp, {r"\b(no|not plausible)\b": "no", r"\b(yes|plausible)\b": "yes"}),
    "web_of_lies": lambda resp, q: map_regex_filter(resp, {
        r"\b(no|does not tell the truth|is not telling the truth)\b": "no",
        r"\b(yes|tells the truth|is telling the truth)\b": "yes",
    }),
    "dyck_languages": _regex(_DYCK),
    "multistep_arithmetic_two": lambda resp, q: number_filter(resp),
    "object_counting": lambda resp, q: number_filter(resp),
    "word_sorting": word_sort_filter,
})


def flexible_extract(task: str, resp: str, question: str | None = None) -> str:
    return FLEXIBLE[task](resp, question)


_COT_ANSWER_RE = r"(?<=the answer is )(.*)(?=.)"


def cot_extract(resp: str) -> str:
    """bbh_cot_fewshot's `get-answer` filter: the text after the first 'the answer is ' minus its last char."""
    return regex_filter(resp, _COT_ANSWER_RE)

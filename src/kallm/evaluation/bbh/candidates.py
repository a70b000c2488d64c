"""The enumerable answers of a BBH example, for log-likelihood (`mc`) scoring."""

from __future__ import annotations

import logging
import re

from kallm.errors import KallmError
from kallm.evaluation.bbh.tasks import BINARY, MULTIPLE_CHOICE, Task

log = logging.getLogger(__name__)

_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s?(.*)$", re.MULTILINE)
_ANY_OPTION = re.compile(r"\(([A-Z])\)")


def options(question: str) -> list[tuple[str, str]]:
    """(letter, text) of the options listed one per line as '(A) text' (else any '(X)' in the text)."""
    found = _OPTION_LINE.findall(question)
    if not found:
        found = [(letter, "") for letter in _ANY_OPTION.findall(question)]
    seen: dict[str, str] = {}
    for letter, text in found:
        seen.setdefault(letter, text.strip())
    return list(seen.items())


def candidates_for(task: Task, question: str) -> list[str]:
    if task.group == BINARY:
        return list(task.spec.answers)
    if task.group == MULTIPLE_CHOICE:
        letters = [f"({letter})" for letter, _ in options(question)]
        if not letters:
            raise KallmError(f"BBH task {task.name}: an example lists no options '(A) ...': {question[:80]!r}")
        return letters
    raise KallmError(f"BBH task {task.name} has free-form answers; mc mode supports multiple-choice and binary tasks")


def target_candidate(target: str, candidates: list[str], question: str) -> str | None:
    """The candidate that the target denotes; a few official targets spell out an option's text instead."""
    if target in candidates:
        return target
    wanted = target.strip().lower()
    for letter, text in options(question):
        if text.strip().lower() == wanted and f"({letter})" in candidates:
            return f"({letter})"
    log.warning("target %r is none of the candidates %s; the example counts as wrong", target, candidates)
    return None

"""Evaluation modes and the prompts lm-eval builds for them (lm-evaluation-harness 0.4.x BBH tasks).

lm-eval assembles `description + fewshot block + doc_to_text(doc)` where the description is the task line
followed by a blank line, each exemplar is `doc_to_text(exemplar) + target_delimiter + target` and
exemplars end with the fewshot_delimiter `\\n\\n`. doc_to_text is `Q: {input}\\nA:` for direct answers and
`Q: {input}\\nA: Let's think step by step.\\n` for CoT, whose exemplar targets are the reasoning alone. The
target delimiter is `" "` for direct answers (`A: (B)`) but `""` in `_cot_fewshot_template_yaml`, so a CoT
exemplar reads `...step by step.\\n<reasoning>` with no space. `tests/evaluation/bbh/fixtures/` holds the prompts of
lm-eval 0.4.13's own task objects, compared character for character.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from kallm.errors import KallmError
from kallm.evaluation.bbh.metrics import METRICS, metrics_of
from kallm.evaluation.bbh.tasks import Task, load_task
from kallm.registry import Registry

TARGET_DELIMITER = " "
COT_TARGET_DELIMITER = ""  # _cot_fewshot_template_yaml: target_delimiter: ""
FEWSHOT_DELIMITER = "\n\n"
COT_TRIGGER = "Let's think step by step."


@dataclass(frozen=True)
class Mode:
    """One evaluation mode: how its prompt is built, how generation stops, and what it reports (the
    registered metrics that apply to it, `kallm.evaluation.bbh.metrics`)."""

    name: str
    exemplars: bool  # few-shot block in the prompt
    cot: bool
    stops: tuple[str, ...]  # besides the model's EOS, which always stops
    max_gen_toks: int
    headline: str
    lm_eval_task: str  # the lm-eval task family it reproduces
    generative: bool = True
    # lm-eval's filter pipelines of that family -> the kallm metric that reproduces each one.
    lm_eval_filters: tuple[tuple[str, str], ...] = ()
    lenient_match: bool = False  # the family's exact_match ignores case and some punctuation (zero-shot)

    def __post_init__(self) -> None:
        for name in (self.headline, *(metric for _, metric in self.lm_eval_filters)):
            METRICS.get(name)

    @property
    def metrics(self) -> tuple[str, ...]:
        return metrics_of(self)


MODES: Registry[Mode] = Registry("BBH mode")
MODES.add("zeroshot", Mode("zeroshot", False, False, ("</s>", "Q:", "<|im_end|>"), 256, "stripped", "bbh_zeroshot",
                           lm_eval_filters=(("strict-match", "strict"), ("flexible-extract", "flexible")),
                           lenient_match=True))
MODES.add("fewshot", Mode("fewshot", True, False, ("</s>", "Q", "\n\n"), 256, "stripped", "bbh_fewshot",
                          lm_eval_filters=(("none", "strict"),)))
MODES.add("cot", Mode("cot", True, True, ("</s>", "Q", "\n\n"), 1024, "stripped", "bbh_cot_fewshot",
                      lm_eval_filters=(("get-answer", "strict"),)))
# Log-likelihood ranking of the enumerable answers after the few-shot (direct answer) prompt.
MODES.add("mc", Mode("mc", True, False, (), 0, "acc", "bbh_fewshot (loglikelihood)", generative=False))


def get_mode(mode: str | Mode) -> Mode:
    return mode if isinstance(mode, Mode) else MODES.get(mode)


def render_prompt(task: Task, question: str, mode: str | Mode) -> str:
    """The prompt lm-eval feeds the model for `question` (a BBH example's input)."""
    spec = get_mode(mode)
    ask = f"Q: {question}\nA:"
    if spec.cot:
        ask += f" {COT_TRIGGER}\n"
    parts = [task.description, FEWSHOT_DELIMITER]
    if spec.exemplars:
        for ex in task.exemplars:
            shot = f"Q: {ex.input}\nA:"
            if spec.cot:
                shot += f" {COT_TRIGGER}\n{COT_TARGET_DELIMITER}{ex.reasoning}"
            else:
                shot += f"{TARGET_DELIMITER}{ex.answer}"
            parts += [shot, FEWSHOT_DELIMITER]
    parts.append(ask)
    return "".join(parts)


def build_prompt(task: str | Task, example: dict[str, str] | str, mode: str | Mode,
                 data_dir: str | os.PathLike[str] | None = None) -> str:
    """lm-eval's prompt for one example (a dict with 'input', or the input text) in the given mode."""
    if isinstance(task, str):
        task = load_task(task, data_dir, limit=1)
    question = example if isinstance(example, str) else example.get("input") if isinstance(example, dict) else None
    if not isinstance(question, str):
        raise KallmError(f"a BBH example must be a dict with an 'input' string or the input text; got {example!r}")
    return render_prompt(task, question, mode)


def chat_template_info(tokenizer) -> dict[str, str]:
    """Which chat template was used: the tokenizer it came from and a hash of the template text."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise KallmError(
            f"--chat-template was requested but the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} "
            "has no chat template"
        )
    text = template if isinstance(template, str) else str(template)
    return {"tokenizer": str(getattr(tokenizer, "name_or_path", "")),
            "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def wrap_chat(tokenizer, prompt: str) -> str:
    """The whole lm-eval prompt as one user turn, followed by the assistant header (generation prompt).

    The template's own default system message, if any, is kept: that is what users of the chat model see.
    """
    chat_template_info(tokenizer)
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)

"""Chat-template tokenisation with labels on assistant tokens only.

Templates rarely mark assistant spans (`{% generation %}`), so the spans are found generically:
rendering the conversation up to turn i with the generation prompt gives the text before the
assistant's reply, rendering up to and including turn i gives the text after it. The characters in
between (minus trailing whitespace the template adds after its end-of-turn marker) are the reply and
its end-of-turn token; tokens starting inside them get labels, everything else gets -100.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from kallm.errors import KallmError
from kallm.progress import progress_bar

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Used when a tokenizer has no chat template: role headers as plain text and the tokenizer's EOS
# closing every turn, so an assistant reply still ends with a token the model learns to emit.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def example_key(input_ids: Sequence[int]) -> str:
    """Content key of a tokenised conversation, so caches are shared across splits, runs and variants."""
    return hashlib.sha1(array("q", input_ids).tobytes()).hexdigest()[:20]


@dataclass(frozen=True)
class TokenizedExample:
    """One conversation: token ids and aligned labels (label == token id on assistant tokens, else -100)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    index: int  # position in the conversation set it came from (a stable key for caches)

    def __len__(self) -> int:
        return len(self.input_ids)

    @cached_property
    def key(self) -> str:
        return example_key(self.input_ids)

    @property
    def num_labels(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


class ChatTokenizer:
    """Wraps a Hugging Face tokenizer: chat template (or the fallback) + assistant-only labels."""

    def __init__(self, tokenizer, max_length: int) -> None:
        if max_length < 2:
            raise KallmError(f"max_length must be >= 2 tokens, got {max_length}")
        if not getattr(tokenizer, "is_fast", False):
            raise KallmError(
                f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; assistant-token labels need "
                f"character offsets (load it with use_fast=True)"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = getattr(tokenizer, "chat_template", None)
        if not self.template:
            log.warning(
                "tokenizer %s has no chat template; using kallm's fallback template "
                "('<|role|>\\ncontent<eos>' per turn, see kallm.data.FALLBACK_CHAT_TEMPLATE)",
                getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
            )
            self.template = FALLBACK_CHAT_TEMPLATE

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def assistant_spans(self, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of each assistant reply + end-of-turn."""
        full = self.render(messages)
        spans = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True) if i else ""
            after = self.render(messages[: i + 1])
            if not (full.startswith(after) and after.startswith(before)):
                raise KallmError(
                    "the chat template does not render conversations incrementally (turn "
                    f"{i} changes earlier text), so assistant tokens cannot be located"
                )
            start, end = len(before), len(after)
            while end > start and after[end - 1].isspace():
                end -= 1
            if end > start:
                spans.append((start, end))
        return full, spans

    def __call__(self, messages: Sequence[dict[str, str]], index: int = 0) -> TokenizedExample | None:
        """Tokenise one conversation; None when truncation to max_length leaves no assistant token."""
        text, spans = self.assistant_spans(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])[: self.max_length]
        offsets = enc["offset_mapping"][: self.max_length]
        labels = [IGNORE_INDEX] * len(ids)
        span_i = 0
        for t, (s, e) in enumerate(offsets):
            while span_i < len(spans) and s >= spans[span_i][1]:
                span_i += 1
            if span_i == len(spans):
                break
            if spans[span_i][0] <= s < spans[span_i][1] and e > s:
                labels[t] = ids[t]
        # Position 0 is never predicted (nothing precedes it), so it does not count as a label.
        if all(lab == IGNORE_INDEX for lab in labels[1:]):
            return None
        return TokenizedExample(tuple(ids), tuple(labels), index)


@dataclass
class TokenizedSet:
    examples: list[TokenizedExample]
    dropped: int  # conversations whose assistant part was cut away entirely by max_length

    @property
    def num_tokens(self) -> int:
        return sum(len(e) for e in self.examples)


def tokenize_conversations(
    tokenizer, conversations: Sequence[Sequence[dict[str, str]]], max_length: int,
    *, progress: bool | None = None, desc: str = "tokenising",
) -> TokenizedSet:
    """Tokenise a list of conversations; drops (and counts) those left without an assistant token."""
    chat = ChatTokenizer(tokenizer, max_length)
    examples, dropped = [], 0
    for i, messages in enumerate(progress_bar(conversations, progress=progress, desc=desc, unit="conv")):
        ex = chat(messages, index=i)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    if dropped:
        log.warning(
            "dropped %d of %d conversations whose assistant reply lies beyond max_length=%d tokens",
            dropped, len(conversations), max_length,
        )
    if not examples:
        raise KallmError(
            f"no conversation keeps an assistant token within max_length={max_length}; raise max_length"
        )
    return TokenizedSet(examples, dropped)

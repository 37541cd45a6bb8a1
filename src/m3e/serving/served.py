"""A model as the server serves it: its public name, its prompts, its inputs made into token ids."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from m3e.serving.errors import ApiError, bad_request
from m3e.serving.sides import Side, SideChoice, choose_prompt
from m3e.truncation import CHARS_PER_TOKEN_BUDGET

if TYPE_CHECKING:
    from m3e.model import EmbeddingModel

logger = logging.getLogger(__name__)

OnLongInput = Literal["truncate", "reject"]
ON_LONG_INPUT: tuple[OnLongInput, ...] = get_args(OnLongInput)


@dataclass(frozen=True)
class Prompt:
    """A prompt as the server applies it."""

    text: str  # put before each text
    length: int  # its leading tokens left out of pooling (a model with include_prompt False)
    ids: list[int]  # its own token ids, put before token-id inputs given in the model's vocabulary


@dataclass
class TokenizedInputs:
    """One request's inputs as the batcher takes them."""

    ids: list[list[int]]
    truncated: int  # inputs cut at the model's max length
    prompt_length: int  # leading prompt tokens left out of pooling


class ServedModel:
    """A model under a public name, with what requests need precomputed."""

    def __init__(self, name: str, model: EmbeddingModel, default_side: Side = "query"):
        self.name = name
        self.model = model
        self.default_side = default_side
        self.dim = int(model.dim)
        self.max_length = int(model.max_length)
        self.wrap = model.add_special_tokens
        self.n_special = len(self.wrap([]))
        self.vocab_size = int(getattr(model.transformer.config, "vocab_size", 0) or len(model.tokenizer))
        # Characters of a text that tokenizing reads at most (encode's budget), and the cl100k_base token ids
        # that cover them: a token is at least one byte, a character at most four.
        self.max_read_chars = self.max_length * CHARS_PER_TOKEN_BUDGET
        self.max_read_ids = 4 * self.max_read_chars
        self._prompts: dict[str, Prompt] = {}

    # ------------------------------------------------------------------ prompts
    def prompt_for(self, choice: SideChoice) -> Prompt:
        """The prompt of a request's side (``--default-side`` when it names none); 400 for an unknown one."""
        return self.prompt(choose_prompt(self.model, choice, self.default_side, self.name))

    def prompt(self, text: str) -> Prompt:
        cached = self._prompts.get(text)
        if cached is None:
            ids = self.model.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            cached = self._prompts[text] = Prompt(text, self.model.prompt_length(text), list(ids))
        return cached

    # ------------------------------------------------------------------ inputs
    def read_cost(self, texts: list[str] | None, token_ids: list[list[int]] | None) -> int:
        """Characters (or token ids) that tokenizing these inputs reads: the start of each text only."""
        if texts is not None:
            return sum(min(len(t), self.max_read_chars) for t in texts)
        return sum(min(len(x), self.max_read_ids) for x in token_ids or [])

    def tokenize_texts(self, texts: list[str], prompt: Prompt, on_long: OnLongInput) -> TokenizedInputs:
        """Token ids as ``encode`` makes them with this prompt, and how many texts were truncated.

        Only the start of a text is read, as ``encode`` reads it: a megabyte-long text costs what a few
        kilobytes do, in time and in memory.
        """
        ids = self.model.tokenize(texts, prompt=prompt.text or None)
        maybe = [i for i, x in enumerate(ids) if len(x) >= self.max_length]
        counts = [(i, self._count_tokens(texts[i], prompt)) for i in maybe]
        long = [(i, n) for i, n in counts if n > self.max_length]
        if long and on_long == "reject":
            i, n = long[0]
            raise _too_long(i, n, self.max_length, len(long), read_all=len(texts[i]) <= self.max_read_chars)
        return TokenizedInputs(ids, len(long), prompt.length)

    def _count_tokens(self, text: str, prompt: Prompt) -> int:
        """Tokens of the prompt and the text's start, read as ``tokenize`` reads it (its character budget,
        further only while that gives no more than max_length tokens): exact for a text read to its end,
        else some number over max_length."""
        reach = self.max_read_chars
        while True:
            count = self.model.count_tokens([prompt.text + text[:reach]])[0]
            if count > self.max_length or reach >= len(text):
                return count
            reach *= 2

    def prepare_token_ids(
        self, batch: list[list[int]], prompt: Prompt, on_long: OnLongInput
    ) -> TokenizedInputs:
        """Token ids in the model's own vocabulary: range-checked, the prompt's ids put first, truncated and
        wrapped in special tokens as the tokenizer would."""
        room = max(self.max_length - self.n_special - len(prompt.ids), 1)
        out: list[list[int]] = []
        truncated = 0
        for i, ids in enumerate(batch):
            self._check_vocabulary(i, ids)
            if len(ids) > room:
                if on_long == "reject":
                    tokens = len(ids) + len(prompt.ids) + self.n_special
                    raise _too_long(i, tokens, self.max_length, None, read_all=True)
                ids = ids[:room]
                truncated += 1
            out.append(self.wrap(prompt.ids + ids))
        return TokenizedInputs(out, truncated, prompt.length)

    def _check_vocabulary(self, index: int, ids: list[int]) -> None:
        lo, hi = min(ids), max(ids)
        if lo >= 0 and hi < self.vocab_size:
            return
        bad = lo if lo < 0 else hi
        raise bad_request(
            f"input[{index}] holds token id {bad}, outside this model's vocabulary "
            f"(0..{self.vocab_size - 1}). This server reads token ids in the served model's own vocabulary "
            "(--token-ids model); a client that sends cl100k_base ids (OpenAI's, e.g. LangChain's "
            "OpenAIEmbeddings) needs a server started with --token-ids openai, the default.",
            code="invalid_value",
        )


def _too_long(index: int, tokens: int, limit: int, count: int | None, *, read_all: bool) -> ApiError:
    """400 for a text over the max length; ``read_all`` False: only its start was read, ``tokens`` unknown."""
    more = f" ({count} inputs are too long)" if count and count > 1 else ""
    has = f"{tokens} tokens, more than" if read_all else "more tokens than"
    return bad_request(
        f"input[{index}] has {has} this model's maximum of {limit}{more}. "
        "Shorten the input, or start the server with --on-long-input truncate.",
        code="context_length_exceeded",
    )


def warm_up(models: Iterable[ServedModel]) -> dict[str, tuple[int, float]]:
    """A few forwards per model (short, medium, full length) so the first request is not slow; returns each
    model's (tokens, seconds) of its last, full-length forward: a first measure of its throughput."""
    measured: dict[str, tuple[int, float]] = {}
    for served in models:
        model = served.model
        tok = model.tokenizer
        filler = tok.unk_token_id if tok.unk_token_id is not None else 100
        room = max(served.max_length - served.n_special, 1)
        for length, count in ((8, 16), (min(64, room), 8), (room, 2)):
            ids = [served.wrap([filler] * length)] * count
            start = time.perf_counter()
            model.embed_token_ids(ids, normalize=False)
            measured[served.name] = (sum(len(x) for x in ids), time.perf_counter() - start)
        model.tokenize(["warm-up 预热"])  # the tokenizer's first call builds caches too
        logger.info("warmed up %s", served.name)
    return measured

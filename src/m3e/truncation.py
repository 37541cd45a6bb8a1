"""Reading only the start of a long text: the characters the first ``max_length`` tokens can come from.

A text is cut to ``CHARS_PER_TOKEN_BUDGET`` characters per token of ``max_length`` before it is tokenized, and
read further (doubling) only in the rare text whose budget gives too few tokens (a long run of spaces, say), so
a megabyte-long text costs what a short one does. The torch model and the compiled model share this rule, so
they cut every text at the same token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Characters read per token of max_length when truncating: no tokenizer m3e meets needs more for one token
# (a CJK character or an English word piece is 1-8), so a cut there leaves the first max_length tokens as they
# were; whitespace runs and the like, which give fewer tokens, are read further.
CHARS_PER_TOKEN_BUDGET = 16

# texts (prompt applied, lower-cased when the model does) -> token ids with special tokens, cut at max_length
TokenizeTruncated = Callable[[list[str]], list[list[int]]]


def truncated_token_ids(
    texts: Sequence[str], max_length: int, prepare: Callable[[list[str]], list[str]], tokenize: TokenizeTruncated
) -> list[list[int]]:
    """Token ids of ``texts`` cut at ``max_length``, reading each text only as far as its first tokens need."""
    if not texts:
        return []
    budget = max_length * CHARS_PER_TOKEN_BUDGET
    out = tokenize(prepare([t[:budget] for t in texts]))
    for i, text in enumerate(texts):
        reach = budget
        while len(text) > reach and len(out[i]) < max_length:
            reach *= 2
            out[i] = tokenize(prepare([text[:reach]]))[0]
    return out

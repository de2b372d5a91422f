"""Translation between a target's and a draft's tokenizers, for a draft model of another family.

Speculative decoding with a draft that has its own vocabulary (Transformers calls it "universal assisted
generation") goes through text both ways: the target's sequence is re-encoded in draft tokens so the draft can run on
it, and the draft's proposal is decoded and re-encoded in target tokens so the target can verify it. The target
verifies the translated ids as point masses, so the output never depends on the translation being good; only the
acceptance rate (speed) does. What the translation must guarantee is that its ids are real target ids that append to
what the target already emitted: emitted tokens are final and never re-tokenised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

__all__ = ["TokenizerBridge"]

# How many tokens to_target moves the window start, earlier and then later, when the window does not survive a round
# trip through text at its start (it began inside a word or inside a multi-byte character).
_WINDOW_SHIFTS = 4
# How many runs of tokens into a re-encoded tail to_draft looks for one that matches the cached encoding exactly.
_SYNC_SEARCH = 4
# The fewest tokens to_draft decodes or re-encodes again when it extends its previous result, whatever the window:
# a tail of one or two tokens would rarely line up with the cached encoding.
_MIN_LOOKBACK = 8
_INCOMPLETE_CHAR = "\ufffd"  # what a byte-level decoder prints for a UTF-8 sequence cut short
_MAX_CUT_BYTES = 3  # a UTF-8 character has at most 4 bytes, so at most 3 of them end a text cut inside one


@dataclass
class _DraftView:
    """The previous to_draft call: its target ids, their text, and that text's draft ids with character spans."""

    target_ids: list[int]
    text: str
    draft_ids: list[int]
    spans: list[tuple[int, int]]


def _runs(spans: list[tuple[int, int]], start: int = 0) -> list[tuple[int, int, int, int]]:
    """Runs of tokens from `start` whose character spans overlap, as (first, stop, begin, end).

    Byte tokens of one character share its span, and so does a space a normalizer prepends to a text with the word
    it joins; a run's span and ids pin it down where a lone token's span may not.
    """
    runs: list[tuple[int, int, int, int]] = []
    for index in range(start, len(spans)):
        begin, end = spans[index]
        if runs and (begin < runs[-1][3] or begin == end):
            first, _, run_begin, run_end = runs[-1]
            runs[-1] = (first, index + 1, run_begin, max(run_end, end))
        else:
            runs.append((index, index + 1, begin, end))
    return runs


def _as_list(ids: Sequence[int]) -> list[int]:
    """A list of Python ints from a list, a tuple or a 1-D tensor (whose elements would be tensors)."""
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


class TokenizerBridge:
    """Maps a target sequence to draft tokens and a draft proposal back to target tokens, through text.

    Args:
        target_tokenizer: the target model's tokenizer.
        draft_tokenizer: the draft model's tokenizer.
        window: how many tokens of context to_target decodes on each side (enough for any merge at the boundary;
            the whole context is never re-tokenised), and how far back (at least 8 tokens) to_draft decodes and
            re-encodes when it extends its previous result.
    """

    def __init__(self, target_tokenizer: PreTrainedTokenizerBase, draft_tokenizer: PreTrainedTokenizerBase,
                 window: int = 16) -> None:
        for name, tokenizer in (("target_tokenizer", target_tokenizer), ("draft_tokenizer", draft_tokenizer)):
            if not isinstance(tokenizer, PreTrainedTokenizerBase):
                raise TypeError(f"{name} must be a Hugging Face tokenizer (transformers.PreTrainedTokenizerBase), "
                                f"got {type(tokenizer).__name__}")
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int, got {type(window).__name__}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.target_tokenizer = target_tokenizer
        self.draft_tokenizer = draft_tokenizer
        self.window = window
        self._view: _DraftView | None = None

    @property
    def _lookback(self) -> int:
        return max(self.window, _MIN_LOOKBACK)

    def reset(self) -> None:
        """Forget the cached to_draft result (it is also dropped by itself when a sequence does not extend it)."""
        self._view = None

    # -- target -> draft ------------------------------------------------------------------------------------------

    def to_draft(self, target_ids: Sequence[int]) -> list[int]:
        """Draft ids for the whole target sequence (its text, special tokens kept as text, without added specials).

        The engine calls this every step on a sequence that only grows, so when `target_ids` extends the previous
        call's sequence only a few tokens back are decoded again and only the last `window` (at least 8) draft
        tokens are re-encoded, with the new text, if the re-encoded tail lines up exactly with the cached encoding.
        Otherwise, and for tokenizers without character offsets, the whole sequence is decoded and encoded again.
        Either way the result is the one the whole text gives.
        """
        target_ids = _as_list(target_ids)
        view = self._extend_view(self._view, target_ids) if self._view is not None else None
        if view is None:
            text = self._decode_target(target_ids)
            view = _DraftView(target_ids, text, *self._encode_draft(text))
        self._view = view
        return list(view.draft_ids)

    def _extend_view(self, view: _DraftView, target_ids: list[int]) -> _DraftView | None:
        """`view` extended to `target_ids` re-encoding only its tail, or None when that cannot be done safely."""
        old = view.target_ids
        if len(target_ids) < len(old) or target_ids[:len(old)] != old or not view.spans:
            return None
        if len(target_ids) == len(old):
            return view
        extended = self._extend_text(view, target_ids[len(old):])
        if extended is None:
            return None
        encoded = self._reencode_tail(view, *extended)
        return None if encoded is None else _DraftView(target_ids, extended[0], *encoded)

    def _extend_text(self, view: _DraftView, new_ids: list[int]) -> tuple[str, int] | None:
        """The text of `view.target_ids + new_ids`, decoding only a few old tokens for context, and how many of its
        leading characters are the cached text's.

        Decoding is not concatenative at the edges (a cut multi-byte character, a leading space a decoder strips,
        spaces cleaned up before punctuation), so the context's text must be a suffix of the cached text, and what
        of it is complete (up to a trailing cut character, which the new tokens may finish) a prefix of the
        context-plus-new text; otherwise None and the caller decodes everything.
        """
        old = view.target_ids
        for size in range(min(self._lookback, len(old)), min(self._lookback + _WINDOW_SHIFTS, len(old)) + 1):
            context_text = self._decode_target(old[-size:])
            complete = context_text.rstrip(_INCOMPLETE_CHAR)
            if complete and view.text.endswith(context_text):  # else it began inside a character: start earlier
                extended = self._decode_target(old[-size:] + new_ids)
                if not extended.startswith(complete):
                    return None
                head = len(view.text) - len(context_text)
                return view.text[:head] + extended, head + len(complete)
        return None

    def _reencode_tail(self, view: _DraftView, text: str, unchanged: int
                       ) -> tuple[list[int], list[tuple[int, int]]] | None:
        """Draft ids and spans of `text` (whose first `unchanged` characters are `view.text`'s) from the cached
        ones and a re-encoded tail.

        The tail starts `window` (at least 8) tokens back, at a character boundary. It is trusted from the first of
        its runs of tokens (among the first few) that has the same span and ids as a cached run inside the
        unchanged text: from there on the two encodings agree, and what comes before is kept from the cache.
        """
        start = max(0, len(view.draft_ids) - self._lookback)
        while start > 0 and view.spans[start - 1][1] > view.spans[start][0]:
            start -= 1  # several byte tokens share one character's span: begin at the first of them
        if start == 0:
            return None
        offset = view.spans[start][0]
        tail_ids, tail_spans = self._encode_draft(text[offset:])
        tail_spans = [(begin + offset, end + offset) for begin, end in tail_spans]
        cached = {(begin, end, tuple(view.draft_ids[first:stop])): first
                  for first, stop, begin, end in _runs(view.spans, start) if begin < end <= unchanged}
        for first, stop, begin, end in _runs(tail_spans)[:_SYNC_SEARCH]:
            index = cached.get((begin, end, tuple(tail_ids[first:stop])))
            if index is not None:
                return view.draft_ids[:index] + tail_ids[first:], view.spans[:index] + tail_spans[first:]
        return None

    # -- draft -> target ------------------------------------------------------------------------------------------

    def to_target(self, target_ids: Sequence[int], draft_context: Sequence[int], drafted: Sequence[int]) -> list[int]:
        """Target ids that continue `target_ids` with the text of `drafted` ([] when there is nothing to propose).

        `drafted` are draft ids generated after `draft_context` (which is `to_draft(target_ids)`). Their text is what
        decoding them after the last `window` context tokens adds, less a trailing incomplete character. That text
        is appended to the text of the target's last `window` tokens and encoded; the tokens after the window are
        kept only if the encoding reproduces the window's ids exactly as a prefix. A window whose very first token
        does not survive the round trip (it began inside a word or a multi-byte character) is moved a few tokens
        earlier or later and tried again. A mismatch further in is a merge across the boundary (the last emitted
        token would be re-tokenised together with new text), and then the result is []: emitted tokens are final.
        Tokens from the first unknown token on are dropped, since an unknown token would only be rejected.
        """
        target_ids, drafted = _as_list(target_ids), _as_list(drafted)
        new_text = self._drafted_text(_as_list(draft_context), drafted) if drafted else ""
        if not new_text:
            return []
        if not target_ids:
            return self._before_unknown(self._encode_target(new_text))
        for size in self._window_sizes(len(target_ids)):
            continuation = self._continue_window(target_ids[-size:], new_text)
            if continuation is not None:
                return continuation
        return []

    def _window_sizes(self, available: int) -> list[int]:
        """Window sizes to try: `window`, then windows starting up to _WINDOW_SHIFTS tokens earlier, then later.

        Each try costs one short encode, and only a window whose first token does not survive the round trip
        through text (one that begins inside a word or a multi-byte character) leads to the next.
        """
        sizes = [self.window + shift for shift in range(_WINDOW_SHIFTS)]
        sizes += [self.window - shift for shift in range(1, _WINDOW_SHIFTS)]
        return list(dict.fromkeys(min(size, available) for size in sizes if size >= 1))

    def _drafted_text(self, draft_context: list[int], drafted: list[int]) -> str:
        """The text `drafted` adds after the draft context's last `window` tokens, without a trailing cut character.

        A byte-level draft can stop inside a multi-byte character, which decodes as U+FFFD (a byte-fallback decoder
        prints the whole run of bytes that way): the last up to three tokens are left out until the text ends
        cleanly, since that character is not part of the proposal yet. If decoding the drafted tokens changes the
        context's own text (a decoder cleaning up spaces across the boundary), there is no clean continuation and
        the text is empty.
        """
        context = draft_context[len(draft_context) - min(self.window, len(draft_context)):]
        before = self._decode_draft(context)
        after = self._decode_draft(context + drafted)
        for stop in range(len(drafted) - 1, max(len(drafted) - _MAX_CUT_BYTES, 0) - 1, -1):
            if not after.endswith(_INCOMPLETE_CHAR):
                break
            after = self._decode_draft(context + drafted[:stop])
        if not after.startswith(before):
            return ""
        return after[len(before):].rstrip(_INCOMPLETE_CHAR)

    def _continue_window(self, window: list[int], new_text: str) -> list[int] | None:
        """Target ids for `new_text` after `window`, [] if they would merge with it, None if the window's own start
        does not survive decoding and re-encoding (another window may)."""
        ids = self._encode_target(self._decode_target(window) + new_text)
        agreed = 0
        for emitted, encoded in zip(window, ids):
            if emitted != encoded:
                break
            agreed += 1
        if agreed == len(window):
            return self._before_unknown(ids[agreed:])
        return None if agreed == 0 else []

    def _before_unknown(self, ids: list[int]) -> list[int]:
        """`ids` up to the first unknown token: text the target cannot encode ends the proposal."""
        unknown = self.target_tokenizer.unk_token_id
        return ids[:ids.index(unknown)] if unknown is not None and unknown in ids else ids

    # -- tokenizer calls ------------------------------------------------------------------------------------------

    def _decode_target(self, ids: list[int]) -> str:
        return self.target_tokenizer.decode(ids, skip_special_tokens=False) if ids else ""

    def _decode_draft(self, ids: list[int]) -> str:
        return self.draft_tokenizer.decode(ids, skip_special_tokens=False) if ids else ""

    def _encode_target(self, text: str) -> list[int]:
        return list(self.target_tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _encode_draft(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Draft ids of `text` and their character spans (empty spans when the tokenizer has no offsets, which turns
        incremental re-encoding off)."""
        if not text:
            return [], []
        if not getattr(self.draft_tokenizer, "is_fast", False):
            return list(self.draft_tokenizer.encode(text, add_special_tokens=False)), []
        encoded = self.draft_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]

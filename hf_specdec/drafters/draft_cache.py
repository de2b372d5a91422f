"""A draft model's KV cache for every row of a batch, so K drafted tokens cost K forwards of `[B, 1]`.

The host knows which tokens each row's slots hold (`tokens`, `columns`); drafted tokens fed back in are only known
on the device until the verify says how many were accepted (`unconfirmed`, settled by `confirm`). A batch of one
stays dense (rollback crops the tail, forwards need no mask); in a larger batch rows keep different numbers of
slots, so each forward gets a 4D mask over the live slots (the target's slot-mask design), dead slots at the tail
are cropped and the cache is compacted when more than half of it is dead.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from ..compat import CACHE_KWARG
from ..engine.cache import COMPACT_MIN_SLOTS, compact, self_attention_cache
from ..engine.run import accepts_logits_to_keep


class DraftCacheRows:
    """The draft's cache over `batch` rows and what each row's slots hold."""

    def __init__(self, model: PreTrainedModel, batch: int, encoder_kwargs: dict | None = None) -> None:
        config = model.config
        if config.is_encoder_decoder:
            self.cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        else:
            self.cache = DynamicCache(config=config)
        rolled_back = self_attention_cache(self.cache)
        rolled_back.activate_past_recording()  # like the target's: sliding-window layers keep their past to be cropped
        windowed = sorted({type(layer).__name__ for layer in rolled_back.layers if type(layer) is not DynamicLayer})
        if batch > 1 and windowed:
            raise ValueError(f"In a batch the draft's cache is masked per row, which its {windowed} layers do not "
                             "allow; generate one prompt at a time with this draft, or use a full-attention draft.")
        self.model, self.batch, self.encoder_kwargs = model, batch, encoder_kwargs or {}
        self.width = 0  # slots (columns) in the cache
        self.tokens: list[list[int]] = [[] for _ in range(batch)]  # each row's known tokens, in order
        self.columns: list[list[int]] = [[] for _ in range(batch)]  # their slots
        self.unconfirmed: list[list[int]] = [[] for _ in range(batch)]  # slots of drafted tokens fed, not yet settled

    def sync(self, row: int, sequence: list[int]) -> list[int]:
        """Drops the row's slots that do not hold a prefix of `sequence` (keeping at least one token to feed) and
        returns the tokens still to feed."""
        self.unconfirmed[row] = []
        common = 0
        for cached, token in zip(self.tokens[row], sequence):
            if cached != token:
                break
            common += 1
        common = min(common, len(sequence) - 1)
        del self.tokens[row][common:], self.columns[row][common:]
        return sequence[common:]

    def confirm(self, row: int, sequence: list[int], num_accepted: int) -> None:
        """The row's first `num_accepted` unconfirmed drafted tokens were accepted: they are `sequence`'s tokens
        after the known ones (the host mirror); the rest of its drafted slots die."""
        kept = self.unconfirmed[row][:num_accepted]
        start = len(self.tokens[row])
        self.tokens[row].extend(sequence[start : start + len(kept)])
        self.columns[row].extend(kept)
        self.unconfirmed[row] = []

    def next_position(self, row: int) -> int:
        return len(self.tokens[row]) + len(self.unconfirmed[row])

    def feed(self, inputs: dict[int, list[int] | torch.Tensor], known: bool,
             ) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor | None]:
        """Appends a block of slots: row b reads `inputs[b]` (a host list of tokens, or a `[1]` device tensor of a
        drafted token), right-aligned so every row's last token is the block's last; rows not in `inputs` idle.
        `known`: whether the host knows these tokens. Returns the forward's input ids `[B, L]`, position ids and
        mask (None for a dense batch of one)."""
        self._tidy()
        length = max(len(tokens) for tokens in inputs.values())
        device = self.model.device
        ids = torch.zeros(self.batch, length, dtype=torch.long, device=device)
        lengths = [0] * self.batch
        for row, tokens in inputs.items():
            lengths[row] = len(tokens)
            ids[row, length - len(tokens):] = torch.as_tensor(tokens, device=device) if isinstance(tokens, list) \
                else tokens
        if self.batch == 1:
            start = self.next_position(0)
            positions = torch.arange(start, start + length, device=device)[None]
        else:
            positions = torch.tensor([[max(0, self.next_position(row) + i - (length - lengths[row]))
                                       for i in range(length)] for row in range(self.batch)], device=device)
        mask = self._mask(lengths, length)
        first = self.width
        self.width += length
        for row, tokens in inputs.items():
            slots = list(range(first + length - lengths[row], first + length))
            if known:
                self.tokens[row].extend(tokens)
                self.columns[row].extend(slots)
            else:
                self.unconfirmed[row].extend(slots)
        return ids, positions, mask

    def _mask(self, lengths: list[int], length: int) -> torch.Tensor | None:
        """None for a dense batch of one; else `[B, 1, L, S + L]` additive: live slots, then causal within the fed
        block (each query always sees itself, so idle rows stay finite)."""
        if self.batch == 1:
            return None
        allowed = torch.zeros(self.batch, length, self.width + length, dtype=torch.bool)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        for row in range(self.batch):
            live = self.columns[row] + self.unconfirmed[row]
            if live:
                allowed[row, :, live] = True
            block = causal.clone()
            block[:, : length - lengths[row]] = False  # the block's left padding
            allowed[row, :, self.width:] = block | torch.eye(length, dtype=torch.bool)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None].to(self.model.device)

    def _tidy(self) -> None:
        """Crops slots past every row's last live one; compacts a long cache that is over half dead."""
        live = [self.columns[row] + self.unconfirmed[row] for row in range(self.batch)]
        end = max((max(cols) + 1 for cols in live if cols), default=0)
        rolled_back = self_attention_cache(self.cache)
        if end < self.width:
            rolled_back.crop(end - self.width)
            self.width = end
        most = max(len(cols) for cols in live)
        if self.batch > 1 and self.width >= COMPACT_MIN_SLOTS and 2 * most < self.width:
            slot_mask = torch.zeros(self.batch, self.width, dtype=torch.bool)
            for row, cols in enumerate(live):
                slot_mask[row, cols] = True
            compact(rolled_back, slot_mask.to(self.model.device), most)
            for row in range(self.batch):  # live slots, in order, now end at the right edge
                count, known = len(live[row]), len(self.columns[row])
                self.columns[row] = list(range(most - count, most - count + known))
                self.unconfirmed[row] = list(range(most - count + known, most))
            self.width = most

    def forward(self, inputs: dict[int, list[int] | torch.Tensor], known: bool,
                vocab: tuple[torch.LongTensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        """`feed`, run: the draft's float32 logits `[B, V]` after each fed row's last token (idle rows: junk).
        vocab: (draft vocabulary `[V']`, its head `[H, V']` or a module, V) to score only those tokens (-inf
        elsewhere)."""
        ids, positions, mask = self.feed(inputs, known)
        model = self.model
        kwargs = {CACHE_KWARG: self.cache, "use_cache": True}
        if model.config.is_encoder_decoder:  # a batch of one; positions come from the cache
            kwargs.update(decoder_input_ids=ids, **self.encoder_kwargs)
        else:
            kwargs.update(input_ids=ids, position_ids=positions)
            if mask is not None:
                kwargs["attention_mask"] = mask
        if vocab is None:
            keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
            return model(**kwargs, **keep).logits[:, -1].float()  # [B, V]
        token_ids, head, size = vocab
        hidden = model.get_decoder()(**kwargs).last_hidden_state[:, -1]  # [B, H]
        # head: the vocabulary's rows `[H, V']`, or a module (an int8 draft's quantized copy of them)
        scores = head(hidden.float()) if isinstance(head, torch.nn.Module) else hidden.to(head.dtype) @ head  # [B, V']
        logits = scores.new_full((self.batch, size), float("-inf"))
        return logits.index_copy_(1, token_ids, scores).float()  # [B, V]: -inf off the draft vocabulary

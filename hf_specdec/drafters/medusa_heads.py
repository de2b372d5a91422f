"""Medusa heads (Cai et al. 2024): K small residual blocks on the target's last hidden state.

Head k (1-based) reads the hidden state that produced token x_{t+1} and predicts x_{t+1+k}. Each head is
`num_layers` residual blocks `h + SiLU(W h + b)` with W and b zero-initialised, so an untrained head returns h
unchanged and, through the target's own (frozen, shared) LM head, reproduces the base next-token prediction.
With `separate_lm_head=True` each head gets its own LM head, initialised from the target's and trained too.

With `token_conditioned=True` the heads are Hydra heads (Ankner et al. 2024): head k also reads the embeddings of
the last emitted token x_{t+1} and of the k - 1 tokens drafted before its own, so each branch of a tree gets its
own next-token guess instead of every branch sharing head k's one top-k.

Only the trained weights are saved (`config.json` + `model.safetensors`), like a PEFT adapter; the shared LM head
(and, for token-conditioned heads, the input embeddings) are attached at run time from the target
(`attach_target`, done by `MedusaStrategy`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import local_or_hub_files, push_folder_to_hub, reject_unknown_keys
from ..kernels.cpu_speedups import CpuLinear, optimize_for_cpu
from ..hub.folders import read_json
from ..rng import keeps_rng
from ..tree import TokenTree, grow_dynamic_tree

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class MedusaHeadsConfig:
    """Shape of a set of Medusa heads; saved as `config.json` next to the weights."""

    hidden_size: int = field(metadata={"help": "Target hidden size (e.g. 576 for SmolLM2-135M)."})
    vocab_size: int = field(metadata={"help": "Target vocabulary size (e.g. 49152 for SmolLM2-135M)."})
    num_heads: int = field(default=4, metadata={"help": "K: head k predicts the token k + 1 positions ahead."})
    num_layers: int = field(default=1, metadata={"help": "Residual blocks per head."})
    separate_lm_head: bool = field(
        default=False,
        metadata={"help": "False: every head projects through the target's own frozen LM head (small files). "
                          "True: each head has its own trainable LM head (saved with the heads)."},
    )
    base_model: str | None = field(default=None, metadata={"help": "Name of the target the heads were trained on."})
    draft_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Draft only from this many token ids (saved with the weights as `draft_token_ids`, set by "
                          "`restrict_draft_vocab`: e.g. the tokens seen in training). Fewer LM-head rows make "
                          "drafting cheaper and cannot change outputs, since the target verifies every draft. "
                          "None: the full vocabulary."},
    )

    token_conditioned: bool = field(
        default=False,
        metadata={"help": "Hydra heads: head k also reads the target's input embeddings of the last emitted token "
                          "and of the k - 1 tokens drafted before (its first block is `h + SiLU(W [h; e_1; ...; "
                          "e_k] + b)`). Drafting then runs head by head, and every tree node gets its own children."},
    )

    def __post_init__(self) -> None:
        for name in ("hidden_size", "vocab_size", "num_heads", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MedusaHeadsConfig.{name} must be an integer >= 1, got {value!r}.")
        if self.draft_vocab_size is not None and not (isinstance(self.draft_vocab_size, int)
                                                      and 1 <= self.draft_vocab_size <= self.vocab_size):
            raise ValueError(f"MedusaHeadsConfig.draft_vocab_size must be None or an integer in [1, vocab_size="
                             f"{self.vocab_size}], got {self.draft_vocab_size!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MedusaHeadsConfig:
        reject_unknown_keys(cls, data, cls.__name__)
        return cls(**data)


class ResBlock(nn.Module):
    """`h + SiLU(linear(h))` with a zero-initialised linear: the identity until trained."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.act(self.linear(hidden))


class TokenConditionedBlock(nn.Module):
    """`h + SiLU(linear([h; e_1; ...; e_n]))` with a zero-initialised linear: the identity until trained."""

    def __init__(self, hidden_size: int, num_tokens: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size * (1 + num_tokens), hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, hidden: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """hidden `[..., H]`, token_embeddings `[..., n, H]` -> `[..., H]`."""
        inputs = torch.cat([hidden, token_embeddings.flatten(-2)], dim=-1)  # [..., (1 + n) H]
        return hidden + self.act(self.linear(inputs))


class MedusaHeads(nn.Module):
    """K Medusa heads. `forward(hidden [..., H]) -> logits [..., K, V]` once an LM head is attached.

    Token-conditioned (Hydra) heads also take `tokens [..., K]`: x_{t+1}, x_{t+2}, ..., x_{t+K}, of which head k
    reads the first k.
    """

    def __init__(self, config: MedusaHeadsConfig) -> None:
        super().__init__()
        self.config = config
        # A token-conditioned head's first block reads the tokens; the remaining blocks are plain residual blocks.
        plain_blocks = config.num_layers - 1 if config.token_conditioned else config.num_layers
        self.token_blocks = (
            nn.ModuleList(TokenConditionedBlock(config.hidden_size, k + 1) for k in range(config.num_heads))
            if config.token_conditioned else None
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(*(ResBlock(config.hidden_size) for _ in range(plain_blocks)))
            for _ in range(config.num_heads)
        )
        self.lm_heads = (
            nn.ModuleList(nn.Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(config.num_heads))
            if config.separate_lm_head else None
        )
        self._shared_lm_head: list[nn.Module] = []  # held in a list so it is not registered (never saved)
        self._embeddings: list[nn.Module] = []  # the target's input embeddings (token-conditioned heads), never saved
        size = config.draft_vocab_size
        self.register_buffer("draft_token_ids", None if size is None else torch.zeros(size, dtype=torch.long))
        # Drafting LM head(s) cut to the draft vocabulary, with the identity of the weights they were cut from.
        self._draft_projections: tuple[tuple, list[nn.Module]] | None = None

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def attach_lm_head(self, lm_head: nn.Module) -> MedusaHeads:
        """Uses the target's LM head (`[H] -> [V]`) for every head; a separate-head set copies it the first time."""
        self._check_vocab_by_hidden(lm_head.weight, "The LM head")
        self._shared_lm_head = [lm_head]
        return self

    def attach_embeddings(self, embeddings: nn.Module) -> MedusaHeads:
        """Uses the target's input embeddings (`[V, H]`) to read tokens (token-conditioned heads)."""
        self._check_vocab_by_hidden(embeddings.weight, "The input embedding table")
        self._embeddings = [embeddings]
        return self

    def _check_vocab_by_hidden(self, weight: torch.Tensor, what: str) -> None:
        if tuple(weight.shape) != (self.config.vocab_size, self.config.hidden_size):
            raise ValueError(f"{what} has shape {list(weight.shape)} but the heads expect "
                             f"[vocab_size={self.config.vocab_size}, hidden_size={self.config.hidden_size}]; "
                             "use heads trained for this target.")

    def attach_target(self, target: nn.Module) -> MedusaHeads:
        """Attaches what the heads borrow from the target: its LM head (unless separate) and, for token-conditioned
        heads, its input embeddings."""
        if self.lm_heads is None:
            self.attach_lm_head(target.get_output_embeddings())
        if self.config.token_conditioned:
            self.attach_embeddings(target.get_input_embeddings())
        return self

    def restrict_draft_vocab(self, token_ids: torch.Tensor) -> MedusaHeads:
        """Draft only from `token_ids` from now on (saved with the heads); see `MedusaHeadsConfig.draft_vocab_size`."""
        ids = torch.unique(torch.as_tensor(token_ids, dtype=torch.long))
        if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= self.config.vocab_size:
            raise ValueError(f"Draft token ids must be a non-empty set in [0, {self.config.vocab_size}).")
        self.config = dataclasses.replace(self.config, draft_vocab_size=ids.numel())
        self.draft_token_ids = ids
        self._draft_projections = None
        return self

    def init_separate_lm_heads(self, lm_head: nn.Module) -> None:
        """Copies the target's LM head into every separate head (call before training a separate-head set)."""
        if self.lm_heads is None:
            raise ValueError("init_separate_lm_heads needs MedusaHeadsConfig(separate_lm_head=True).")
        with torch.no_grad():
            for head in self.lm_heads:
                head.weight.copy_(lm_head.weight)

    def head_state(self, k: int, hidden_states: torch.Tensor, token_embeddings: torch.Tensor | None = None,
                   ) -> torch.Tensor:
        """Head k's (0-based) transformed state `[..., H]`; token-conditioned heads read `token_embeddings`
        `[..., >= k + 1, H]` (x_{t+1}, ..., x_{t+1+k}: only the first k + 1 are used)."""
        if self.token_blocks is not None:
            if token_embeddings is None:
                raise ValueError("Token-conditioned heads need the embeddings of the tokens drafted so far "
                                 "(MedusaStrategy passes them).")
            hidden_states = self.token_blocks[k](hidden_states, token_embeddings[..., : k + 1, :])
        return self.blocks[k](hidden_states)

    def hidden(self, hidden_states: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """The heads' transformed states: `[..., H]` (and `[..., K, H]` token embeddings) -> `[..., K, H]`."""
        return torch.stack([self.head_state(k, hidden_states, token_embeddings) for k in range(self.num_heads)],
                           dim=-2)  # [..., K, H]

    def embed(self, tokens: torch.LongTensor) -> torch.Tensor:
        """The target's input embeddings of `tokens` `[...]` -> `[..., H]` (token-conditioned heads)."""
        if not self._embeddings:
            raise ValueError("No input embeddings attached: call heads.attach_target(model) "
                             "(MedusaStrategy does this for you).")
        return self._embeddings[0](tokens)

    def forward(self, hidden_states: torch.Tensor, tokens: torch.LongTensor | None = None) -> torch.Tensor:
        """`[..., H]` -> logits `[..., K, V]`; logits[..., k - 1, :] predicts the token k + 1 positions ahead.

        Token-conditioned heads also need `tokens` `[..., K]` (x_{t+1}, ..., x_{t+K}).
        """
        token_embeddings = None
        if self.token_blocks is not None:
            if tokens is None:
                raise ValueError("Token-conditioned heads need `tokens` [..., K]: the token after each hidden state "
                                 "and the K - 1 tokens that follow it.")
            token_embeddings = self.embed(tokens)
        states = self.hidden(hidden_states, token_embeddings)  # [..., K, H]
        if self.lm_heads is not None:
            return torch.stack([head(states[..., i, :]) for i, head in enumerate(self.lm_heads)], dim=-2)
        if not self._shared_lm_head:
            raise ValueError("No LM head attached: call heads.attach_lm_head(model.get_output_embeddings()) "
                             "(MedusaStrategy does this for you).")
        return self._shared_lm_head[0](states)  # [..., K, V]

    @torch.no_grad()
    def draft_logits(self, hidden_state: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of the first `depth` plain (not token-conditioned) heads for one hidden state `[H]` over the
        draft vocabulary.

        Returns (`[depth, V']` float32, the token id of each column `[V']`, or None when V' is the full vocabulary).
        """
        if self.token_blocks is not None:
            raise ValueError("Token-conditioned heads draft head by head: use draft_tree.")
        states = torch.stack([block(hidden_state) for block in self.blocks[:depth]])  # [D, H]
        if self.lm_heads is None:  # the shared LM head: one product for every head
            return self._draft_projection(0, states)
        logits = torch.cat([self._draft_projection(k, states[k : k + 1])[0] for k in range(depth)])  # [D, V']
        return logits, self.draft_token_ids

    @torch.no_grad()
    def draft_chains(self, hidden_states: torch.Tensor, last_tokens: torch.LongTensor, depth: int,
                     ) -> tuple[torch.LongTensor, torch.Tensor]:
        """Every row's top-1 chain in one pass over the rows, on the device: hidden_states `[R, H]` produced
        `last_tokens` `[R]`. Plain heads score all `depth` heads in one product; token-conditioned heads go head by
        head, each reading the chain drafted so far. Returns (tokens `[R, depth]`, their probabilities under their
        heads `[R, depth]`, softmax over the draft vocabulary)."""
        rows = hidden_states.shape[0]
        if self.token_blocks is None:
            states = torch.stack([block(hidden_states) for block in self.blocks[:depth]], dim=1)  # [R, D, H]
            if self.lm_heads is None:
                logits, vocab = self._draft_projection(0, states.reshape(rows * depth, -1))
                logits = logits.view(rows, depth, -1)  # [R, D, V']
            else:
                logits = torch.stack([self._draft_projection(k, states[:, k])[0] for k in range(depth)], dim=1)
                vocab = self.draft_token_ids
            probs, index = logits.softmax(dim=-1).max(dim=-1)  # [R, D]
            return (index if vocab is None else vocab[index]), probs
        context, probs = last_tokens[:, None], []  # [R, 1]: x_{t+1}, then the drafted tokens
        for k in range(depth):
            state = self.head_state(k, hidden_states, self.embed(context).to(hidden_states.dtype))  # [R, H]
            logits, vocab = self._draft_projection(k, state)  # [R, V']
            prob, index = logits.softmax(dim=-1).max(dim=-1)  # [R]
            context = torch.cat([context, (index if vocab is None else vocab[index])[:, None]], dim=1)
            probs.append(prob)
        return context[:, 1:], torch.stack(probs, dim=1)

    @torch.no_grad()
    def draft_tree(self, hidden_state: torch.Tensor, last_token: int, tree: TokenTree,
                   ) -> tuple[torch.LongTensor, torch.Tensor]:
        """The token at every node of `tree` and its probability under its head (softmax over the draft vocabulary).

        hidden_state `[H]` produced `last_token` (x_{t+1}). A node of rank r at depth d holds head d's rank-r token;
        for token-conditioned heads, head d reads x_{t+1} and the node's ancestors, so siblings' subtrees differ.
        Returns (tokens `[N]`, probs `[N]`).
        """
        top_children = self._top_children(hidden_state, last_token, tree.max_depth, tree.max_rank)
        children = tree.children()
        tokens, probs = [0] * tree.num_nodes, [0.0] * tree.num_nodes
        paths: dict[int, tuple[int, ...]] = {-1: ()}  # node -> its tokens from depth 1 (-1: the root)
        parents = [-1]
        for k in range(tree.max_depth):
            parents = [p for p in parents if children[p + 1]]
            if not parents:
                break
            top_tokens, top_probs = top_children(k, [paths[p] for p in parents])  # [P, width] lists
            for row, parent in enumerate(parents):
                for child in children[parent + 1]:
                    rank = int(tree.ranks[child])
                    tokens[child], probs[child] = top_tokens[row][rank], top_probs[row][rank]
                    paths[child] = (*paths[parent], tokens[child])
            parents = [c for p in parents for c in children[p + 1]]
        return torch.tensor(tokens), torch.tensor(probs)

    @torch.no_grad()
    def draft_dynamic_tree(self, hidden_state: torch.Tensor, last_token: int, depth: int, num_nodes: int,
                           width: int) -> tuple[TokenTree, torch.LongTensor, torch.Tensor]:
        """A tree shaped by this step's own head probabilities (EAGLE-2's `tree.grow_dynamic_tree`), instead of a
        fixed shape. Returns (tree, tokens `[N]`, each node's own head probability `[N]`)."""
        return grow_dynamic_tree(self._top_children(hidden_state, last_token, depth, width), depth, num_nodes,
                                 width)

    def _top_children(self, hidden_state: torch.Tensor, last_token: int, depth: int, width: int):
        """`top_children(k, paths)`: head k's (0-based) top-`width` tokens and probabilities after each token path
        (the drafted tokens from depth 1), as two `[P, width]` lists. Plain heads ignore the paths: all `depth`
        heads are computed once, in one product."""
        if self.token_blocks is None:
            logits, vocab = self.draft_logits(hidden_state, depth)  # [D, V']
            top = logits.softmax(dim=-1).topk(width, dim=-1)  # [D, width]
            tokens, probs = (top.indices if vocab is None else vocab[top.indices]).tolist(), top.values.tolist()
            return lambda k, paths: ([tokens[k]] * len(paths), [probs[k]] * len(paths))

        def top_children(k: int, paths: list[tuple[int, ...]]) -> tuple[list[list[int]], list[list[float]]]:
            context = torch.tensor([[last_token, *path] for path in paths], device=hidden_state.device)  # [P, k + 1]
            state = self.head_state(k, hidden_state.expand(len(paths), -1), self.embed(context).to(hidden_state.dtype))
            logits, vocab = self._draft_projection(k, state)  # [P, V']
            top = logits.softmax(dim=-1).topk(width, dim=-1)  # [P, width]
            return (top.indices if vocab is None else vocab[top.indices]).tolist(), top.values.tolist()

        return top_children

    def _draft_projection(self, k: int, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head k's drafting LM head applied to `states` `[P, H]`: float32 logits `[P, V']` and the column ids."""
        projections = self._drafting_projections()
        head = projections[0] if self.lm_heads is None else projections[k]
        return head(states.to(head.weight.dtype)).float(), self.draft_token_ids

    def _drafting_projections(self) -> list[nn.Module]:
        """The LM head(s) used for drafting: the shared one or one per head, cut to the draft vocabulary's rows.

        The cut copies are made once and remade only when a source weight changes (another LM head attached, or
        training updated it in place), so repeated `generate` calls reuse them.
        """
        heads = list(self.lm_heads) if self.lm_heads is not None else self._shared_lm_head
        if not heads:
            raise ValueError("No LM head attached: call heads.attach_lm_head(model.get_output_embeddings()) "
                             "(MedusaStrategy does this for you).")
        ids = self.draft_token_ids
        if ids is None:
            return heads
        key = tuple((head.weight.data_ptr(), head.weight._version) for head in heads)
        if self._draft_projections is None or self._draft_projections[0] != key:
            self._draft_projections = (key, [output_rows(head, ids) for head in heads])
        return self._draft_projections[1]

    # ---- saving and loading, like a PEFT adapter -------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes `config.json` and `model.safetensors` (trained weights only) into `save_directory`."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    @keeps_rng
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> MedusaHeads:
        """Loads from a local directory first, else downloads `config.json` and the weights from a Hub repo."""
        from safetensors.torch import load_file

        config_path, weights_path = local_or_hub_files(path_or_repo_id, (CONFIG_FILE, WEIGHTS_FILE), **hub_kwargs)
        heads = cls(MedusaHeadsConfig.from_dict(read_json(config_path)))
        heads.load_state_dict(load_file(str(weights_path)))
        return heads.eval()

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload Medusa heads") -> str:
        """Creates `repo_id` if needed and uploads the config and weights; returns the commit URL."""
        return push_folder_to_hub(self.save_pretrained, repo_id, private=private, token=token,
                                  commit_message=commit_message)


def medusa_loss(logits: torch.Tensor, labels: torch.Tensor, decay: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Medusa-1 loss: sum over heads of decay**k * cross-entropy, and each head's top-1 accuracy.

    logits: `[N, K, V]` head logits at N positions; labels: `[N, K]` the token each head should predict (-100 to
    ignore). Returns (loss, accuracy `[K]`).
    """
    num_heads = logits.shape[1]
    losses, accuracy = [], []
    for k in range(num_heads):
        valid = labels[:, k] != -100  # [N]
        ce = nn.functional.cross_entropy(logits[:, k], labels[:, k], ignore_index=-100, reduction="sum")
        losses.append(decay ** (k + 1) * ce / valid.sum().clamp_min(1))
        hits = (logits[:, k].argmax(-1) == labels[:, k]) & valid
        accuracy.append(hits.sum() / valid.sum().clamp_min(1))
    return torch.stack(losses).sum(), torch.stack(accuracy).detach()


def medusa_labels(tokens: torch.LongTensor, num_heads: int) -> torch.LongTensor:
    """Labels for Medusa heads over one sequence: row t, head k (1-based) -> tokens[t + 1 + k], -100 past the end.

    tokens: `[L]` -> `[L, K]`.
    """
    length = tokens.shape[0]
    labels = torch.full((length, num_heads), -100, dtype=torch.long)
    for k in range(1, num_heads + 1):
        shift = 1 + k
        if length > shift:
            labels[: length - shift, k - 1] = tokens[shift:]
    return labels


@torch.no_grad()
def output_rows(linear: nn.Linear, ids: torch.LongTensor) -> nn.Linear:
    """A frozen copy of `linear` that computes only the outputs `ids` (CPU-optimized if `linear` is).

    Reading V' rows of an LM head instead of all V is what makes drafting over a smaller vocabulary cheaper.
    """
    weight = linear.weight.detach()
    rows = nn.Linear(linear.in_features, ids.numel(), bias=linear.bias is not None, device=weight.device,
                     dtype=weight.dtype)
    ids = ids.to(weight.device)
    rows.weight.copy_(weight[ids])
    if linear.bias is not None:
        rows.bias.copy_(linear.bias.detach()[ids])
    rows.requires_grad_(False)
    return optimize_for_cpu(rows) if isinstance(linear, CpuLinear) else rows

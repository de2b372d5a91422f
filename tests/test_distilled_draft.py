"""Drafts cut from their target (hf_specdec.distilled_draft): shared weights, save/load, the target check, and
DraftModelStrategy's draft-vocabulary and prompt-lookup paths."""

from __future__ import annotations

import pytest
import torch
from conftest import draft_strategy, make_llama, repetitive_prompt
from safetensors.torch import load_file

from hf_specdec.distilled_draft import (WEIGHTS_FILE, build_draft, draft_vocab, load_draft, save_draft,
                                        set_draft_vocab)


@pytest.fixture(scope="module")
def target():
    return make_llama(layers=3, seed=4)


def test_a_draft_of_every_layer_is_the_target(target):
    """Layers copied in order, final norm copied, embedding and head shared: the same function as the target."""
    draft = build_draft(target, [0, 1, 2])
    assert draft.get_input_embeddings() is target.get_input_embeddings()
    assert draft.get_output_embeddings() is target.get_output_embeddings()
    ids = repetitive_prompt(0)
    torch.testing.assert_close(draft(ids).logits, target(ids).logits)
    assert not torch.allclose(build_draft(target, [0, 2])(ids).logits, target(ids).logits)


def test_bad_layer_indices_are_refused(target):
    with pytest.raises(ValueError, match=r"layer indices \(0\.\.2\)"):
        build_draft(target, [0, 3])


def test_save_keeps_only_the_drafts_own_weights_and_loads_bit_exact(target, tmp_path):
    draft = build_draft(target, [2, 0])
    with torch.no_grad():
        draft.get_decoder().norm.weight.mul_(1.5)  # trained weights differ from the copied ones
    save_draft(draft, tmp_path, target, source_layers=[2, 0], draft_vocab=torch.tensor([9, 3, 3, 40]),
               dtype=torch.float32)
    saved = load_file(str(tmp_path / WEIGHTS_FILE))
    assert not any("embed" in key or "lm_head" in key for key in saved)  # the target's, never saved
    loaded = load_draft(tmp_path, target)
    assert loaded.get_input_embeddings() is target.get_input_embeddings()
    ids = repetitive_prompt(1)
    assert torch.equal(loaded(ids).logits, draft(ids).logits)
    assert draft_vocab(loaded).tolist() == [3, 9, 40]


def test_loading_for_another_target_is_refused(target, tmp_path):
    save_draft(build_draft(target, [0]), tmp_path, target, source_layers=[0])
    with pytest.raises(ValueError, match="num_hidden_layers 3 \\(this target: 2\\)"):
        load_draft(tmp_path, make_llama(layers=2, seed=4))
    with pytest.raises(ValueError, match="embedding differs"):
        load_draft(tmp_path, make_llama(layers=3, seed=5))  # same shapes, other weights
    with pytest.raises(FileNotFoundError, match="No such local folder"):
        load_draft(tmp_path / "missing", target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no draft saved by hf_specdec"):
        load_draft(tmp_path / "empty", target)


def test_a_draft_vocabulary_must_index_the_head(target):
    draft = build_draft(target, [0])
    with pytest.raises(ValueError, match="token ids in \\[0, 97\\)"):
        set_draft_vocab(draft, torch.tensor([5, 97]))


def test_the_draft_vocabulary_bounds_what_is_drafted(target):
    draft = build_draft(target, [0, 1])
    set_draft_vocab(draft, torch.arange(2, 50))
    drafted = []
    strategy = draft_strategy(draft, num_speculative_tokens=4)
    strategy.step_listeners.append(lambda event: drafted.extend(event.drafted))
    out = target.generate(repetitive_prompt(2), max_new_tokens=30, do_sample=False, assistant_model=strategy)
    assert torch.equal(out, target.generate(repetitive_prompt(2), max_new_tokens=30, do_sample=False))
    assert drafted and all(2 <= token < 50 for token in drafted)


def test_prompt_lookup_in_front_drafts_longer_than_the_models_k(target):
    """On a match lookup drafts up to `lookup_num_tokens`; the model stays at its own K."""
    lengths = []
    strategy = draft_strategy(build_draft(target, [0]), num_speculative_tokens=2, lookup_min_ngram=1,
                              lookup_num_tokens=7)
    strategy.step_listeners.append(lambda event: lengths.append(len(event.drafted)))
    prompt = torch.arange(10, 40).repeat(3)[None]  # every suffix recurs
    target.generate(prompt, max_new_tokens=30, do_sample=False, assistant_model=strategy)
    assert max(lengths) == 7
    with pytest.raises(ValueError, match="lookup_min_ngram must be in \\[0, 4\\]"):
        draft_strategy(target, lookup_min_ngram=5)

"""EAGLE-3 in speculators' format, checked against `speculators` itself (a test-only dependency, installed with
--no-deps by scripts/install.sh; these tests skip without it): a random speculators EAGLE-3 for a tiny Llama verifier
loads into `EagleDrafter` and gives speculators' own draft logits at every training-time-test depth; a folder we save
loads into speculators with every weight in place and the same logits; greedy decoding with it equals plain
`generate`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import repetitive_prompt

import hf_specdec
from hf_specdec.drafters.eagle_drafter import DrafterCache, EagleDrafter

speculators = pytest.importorskip("speculators", reason="pip install --no-deps speculators==0.9.0 (scripts/install.sh)")
from speculators.models.eagle3 import Eagle3DraftModel  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

LAYERS = [1, 3, 4]


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    """A tiny Llama target saved where speculators reads its embeddings from (offline: a local folder)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, eos_token_id=1,
                         pad_token_id=0, bos_token_id=0)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("verifier")
    model.save_pretrained(folder)
    return model, folder


def speculators_drafter(verifier, folder) -> Eagle3DraftModel:
    """A random speculators EAGLE-3 (one layer, a 32-token draft vocabulary) as its own trainer builds one."""
    model, path = verifier
    torch.manual_seed(1)
    layer = LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": 1})
    ids = torch.arange(0, 64, 2)
    t2d = torch.zeros(64, dtype=torch.bool)
    t2d[ids] = True
    draft = Eagle3DraftModel.from_training_args(layer, t2d=t2d, d2t=ids - torch.arange(32), draft_vocab_size=32,
                                                norm_before_residual=False, ttt_steps=3,
                                                verifier_name_or_path=str(path), target_layer_ids=LAYERS,
                                                draft_attn_impl="sdpa")
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)  # not an identity-like fresh init
    draft.save_pretrained(folder)
    return draft.eval()


def speculators_logits(draft: Eagle3DraftModel, features, ids, steps: int) -> list[torch.Tensor]:
    """speculators' draft logits at each training-time-test depth (its forward returns only argmax tokens)."""
    captured = []
    hook = draft.lm_head.register_forward_hook(lambda module, args, out: captured.append(out[0]))
    with torch.no_grad():
        draft(hidden_states=features, input_ids=ids, document_ids=torch.zeros_like(ids), ttt_steps=steps)
    hook.remove()
    return captured


@torch.no_grad()
def test_a_speculators_folder_gives_speculators_logits_at_every_depth(verifier, tmp_path):
    theirs = speculators_drafter(verifier, tmp_path)
    ours = EagleDrafter.from_pretrained(tmp_path).attach_target(verifier[0])
    assert ours.config.aux_layer_ids == LAYERS and ours.draft_token_ids.tolist() == list(range(0, 64, 2))
    length, steps = 9, 3
    features, ids = torch.randn(1, length, 3 * 32), torch.randint(0, 64, (1, length))
    expected = speculators_logits(theirs, features, ids, steps)
    # speculators teacher-forces the true tokens into deeper steps; `unrolled_states` reads them the same way.
    tokens = torch.cat([ids, torch.zeros(1, steps - 1, dtype=torch.long)], dim=1)
    for j, states in enumerate(ours.unrolled_states(features, tokens, steps)):
        logits = ours.draft_logits(states[0])[0]
        torch.testing.assert_close(logits[: length - j], expected[j][: length - j], atol=1e-5, rtol=1e-4)
    run_time = ours.draft_logits(ours.step(ours.project(features[0]), ids[0], torch.arange(length), DrafterCache()))
    torch.testing.assert_close(run_time[0], expected[0], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_our_folder_loads_in_speculators_with_every_weight(verifier, tmp_path):
    model, path = verifier
    torch.manual_seed(2)
    ours = EagleDrafter.from_target(model, range(0, 64, 2), aux_layer_ids=LAYERS)
    for parameter in ours.parameters():
        parameter.add_(torch.randn_like(parameter) * 0.3)
    ours.save_pretrained(tmp_path, verifier_name_or_path=str(path))
    config = json.loads((tmp_path / "config.json").read_text())
    config["transformer_layer_config"]["attn_implementation"] = "sdpa"  # as in speculators_drafter (no flex kernel)
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = Eagle3DraftModel.from_pretrained(tmp_path).eval()
    # We never save the target's embedding table (56 MB for SmolLM2; vLLM shares the target's when a drafter has
    # none). speculators 0.9.0 fills an absent table from the verifier only while it still holds its NaN sentinel,
    # which Transformers' weight init overwrites in some runs (order-dependent here), so the verifier's is set here.
    theirs.embed_tokens.weight.copy_(model.get_input_embeddings().weight)
    loaded = theirs.state_dict()
    for name, tensor in ours.state_dict().items():  # nothing of ours is missing or renamed over there
        assert name in loaded and torch.equal(loaded[name].to(tensor.dtype), tensor), name
    assert not any(torch.isnan(p).any() for p in theirs.parameters())  # nothing left uninitialised (NaN) there
    assert theirs.config.eagle_aux_hidden_state_layer_ids == LAYERS
    features, ids = torch.randn(1, 7, 3 * 32), torch.randint(0, 64, (1, 7))
    expected = speculators_logits(theirs, features, ids, 1)[0]
    logits = ours.draft_logits(ours.step(ours.project(features[0]), ids[0], torch.arange(7), DrafterCache()))[0]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_greedy_with_a_speculators_drafter_equals_plain_generate(verifier, tmp_path):
    model, _ = verifier
    speculators_drafter(verifier, tmp_path)
    drafter = EagleDrafter.from_pretrained(tmp_path)
    for settings in ({"tree": None, "lookup_min_ngram": 0}, {"lookup_min_ngram": 0}, {}):
        for i in range(4):
            prompt = repetitive_prompt(i) % 62 + 2  # no pad (0) or eos (1) token inside
            plain = model.generate(prompt, max_new_tokens=16, do_sample=False)
            strategy = hf_specdec.EagleStrategy(drafter, **settings)
            out = model.generate(prompt, max_new_tokens=16, do_sample=False, assistant_model=strategy)
            assert torch.equal(out, plain), (settings, i)
            assert strategy.last_stats.drafted > 0 or settings == {}

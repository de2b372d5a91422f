"""The command line: the chat REPL driven line by line, the live token view, `generate`, `eval` forwarding, and one
session in a real pseudo-terminal. Models are the CLI's own tiny random ones (`--model tiny-random`)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from rich.console import Console

from hf_specdec.cli import main
from hf_specdec.cli_models import TINY_RANDOM, load_bundle
from hf_specdec.live_view import LiveView, RunSummary, TextAssembler, summary_line
from hf_specdec.repl import COMMANDS, Repl
from hf_specdec.session import ChatSettings
from hf_specdec.stats import GenerationStats, StepEvent
from hf_specdec.tiny_models import char_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle():
    # no heads or drafter folder even where the committed ones exist: they do not fit the tiny model
    return load_bundle(TINY_RANDOM, TINY_RANDOM, None, device="cpu")


@pytest.fixture(scope="module")
def bundle_no_draft():
    return load_bundle(TINY_RANDOM, None, None, device="cpu")


def make_repl(bundle, lines: str = "", terminal: bool = False, **settings) -> tuple[Repl, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, color_system="standard" if terminal else None, width=200,
                      highlight=False)
    base = ChatSettings(drafter="draft_model" if bundle.draft is not None else "ngram", max_new_tokens=12)
    repl = Repl(bundle, console, dataclasses.replace(base, **settings), input_stream=io.StringIO(lines))
    return repl, out


# ---- every command is accepted --------------------------------------------------------------------------------------
GOOD = [  # (setup lines, command, expected settings changes)
    ([], "/help", {}),
    ([], "/help gamma", {}),
    ([], "/show", {}),
    ([], "/stats", {}),
    (["/target"], "/speculative", {"run_target": True, "run_speculative": False}),
    ([], "/speculative", {"run_target": True, "run_speculative": False}),
    ([], "/target", {"run_target": True}),
    ([], "/drafter", {"run_drafter": True}),
    ([], "/ngram", {"drafter": "ngram"}),
    ([], "/nasd", {"drafter": "nasd"}),
    (["/ngram"], "/draft_model", {"drafter": "draft_model"}),
    ([], "/length 7", {"max_new_tokens": 7}),
    ([], "/gamma 3", {"gamma": 3}),
    (["/gamma 3"], "/gamma default", {"gamma": None}),
    (["/ngram"], "/egag", {"egag": True, "drafter": "draft_model"}),
    ([], "/egag_gamma_min 2", {"egag_gamma_min": 2}),
    ([], "/egag_gamma_max 5", {"egag_gamma_max": 5}),
    ([], "/egag_ema 0.25", {"egag_ema": 0.25}),
    (["/processor topk"], "/processor greedy", {"processor": "greedy"}),
    ([], "/processor multinomial 0.7", {"processor": "multinomial", "temperature": 0.7}),
    ([], "/processor topk 0.8 20", {"processor": "topk", "temperature": 0.8, "top_k": 20}),
    ([], "/processor nucleus 0.9 0.8", {"processor": "nucleus", "temperature": 0.9, "top_p": 0.8}),
    ([], "/processor topknucleus 0.7 10 0.95", {"processor": "topknucleus", "temperature": 0.7, "top_k": 10,
                                                 "top_p": 0.95}),
    ([], "/top_k_filler 5", {"top_k_filler": 5}),
    ([], "/set_ngramstorage onelevel 4", {"ngram_storage": "onelevel", "ngram_size": 4}),
    ([], "/set_ngramstorage basic", {"ngram_storage": "basic"}),
    ([], "/reset_in_between", {"reset_in_between": False}),
    ([], "/cache", {"use_cache": False}),
    ([], "/debug", {"debug": True}),
    ([], "/quit", {}),
]


def test_good_commands_cover_every_command():
    tested = {line.split()[0][1:] for _, line, _ in GOOD}
    assert tested >= set(COMMANDS) - {"medusa", "eagle"}  # see test_medusa_when_available, test_eagle_when_available


@pytest.mark.parametrize("setup, line, changes", GOOD, ids=[line for _, line, _ in GOOD])
def test_every_command_is_accepted(bundle, setup, line, changes):
    repl, out = make_repl(bundle)
    for setup_line in setup:
        assert repl.run_command(setup_line)
    before = dataclasses.replace(repl.settings)
    assert repl.run_command(line), out.getvalue()
    assert "Nothing changed" not in out.getvalue() and "Unknown command" not in out.getvalue()
    assert out.getvalue().strip()  # every command answers something
    for name, value in changes.items():
        assert getattr(repl.settings, name) == value, name
    untouched = {f.name for f in dataclasses.fields(ChatSettings)} - set(changes)
    if not setup:
        assert {name: getattr(repl.settings, name) for name in untouched} == \
               {name: getattr(before, name) for name in untouched}
    assert repl.running == (line != "/quit")


BAD = ["/foo", "/", "/length", "/length abc", "/length 0", "/gamma -1", "/gamma 1 2", "/egag_ema 0", "/egag_ema 1.5",
       "/egag_ema x", "/egag_gamma_min 20", "/egag_gamma_max 0", "/processor", "/processor beam",
       "/processor topk 0.5 0", "/processor nucleus 1 1.5", "/processor greedy 0.5", "/processor multinomial -1",
       "/processor topk 1 2 3", "/set_ngramstorage", "/set_ngramstorage trie 3", "/set_ngramstorage basic 1",
       "/set_ngramstorage basic 3 4", "/top_k_filler 0", "/debug now", "/speculative on", "/help nosuch", "/quit now",
       "/medusa"]


@pytest.mark.parametrize("line", BAD)
def test_bad_command_changes_nothing(bundle, line):
    repl, out = make_repl(bundle)
    before = dataclasses.replace(repl.settings)
    assert not repl.run_command(line)
    assert repl.settings == before and repl.running
    message = " ".join(out.getvalue().split())  # the console wraps long lines
    assert "Nothing changed" in message or "Unknown command" in message


@pytest.mark.parametrize("line", ["/drafter", "/egag", "/draft_model"])
def test_draft_commands_need_a_draft_model(bundle_no_draft, line):
    repl, out = make_repl(bundle_no_draft)
    before = dataclasses.replace(repl.settings)
    assert not repl.run_command(line)
    assert repl.settings == before
    assert "--draft DIR" in out.getvalue()


def test_speculative_toggles_with_target_only(bundle):
    repl, out = make_repl(bundle)
    assert repl.run_command("/speculative") and repl.settings.modes() == ["target"]
    assert not repl.run_command("/target") and "must stay on" in out.getvalue()  # the only mode left
    assert repl.run_command("/speculative") and repl.settings.modes() == ["speculative"]
    assert repl.run_command("/target") and repl.run_command("/speculative") and repl.run_command("/speculative")
    assert repl.settings.modes() == ["target", "speculative"]  # a target run the user asked for stays


def test_medusa_unavailable_says_how_to_get_heads(bundle):
    repl, out = make_repl(bundle)
    assert not repl.run_command("/medusa")
    assert "Medusa heads are not available" in out.getvalue() and "--medusa DIR" in out.getvalue()


def test_picking_ngram_turns_egag_off(bundle):
    repl, out = make_repl(bundle)
    repl.run_command("/egag")
    repl.run_command("/nasd")
    assert repl.settings.drafter == "nasd" and not repl.settings.egag
    assert "EGAG off" in out.getvalue()


# ---- generation -------------------------------------------------------------------------------------------------------
def test_session_generates_and_quits(bundle):
    repl, out = make_repl(bundle, "hello hello hello\n/target\nhello hello hello\n/quit\nnever read\n")
    assert repl.run() == 0
    text = out.getvalue()
    assert text.count("[speculative · draft_model, K=default]") == 2
    assert "acceptance" in text and "mean accepted length" in text and "tok/s" in text
    assert "speedup n/a" in text  # first turn: no baseline yet
    assert "x vs target-only" in text  # second turn: the target ran first
    assert "never read" not in text


@pytest.mark.parametrize("commands", [["/ngram"], ["/nasd", "/reset_in_between"], ["/egag"], ["/gamma 2"],
                                      ["/processor topknucleus 0.8 20 0.9"], ["/drafter", "/cache", "/target"],
                                      ["/debug"]])
def test_every_drafter_and_mode_generates(bundle, commands):
    repl, _ = make_repl(bundle)
    for line in commands:
        assert repl.run_command(line)
    for _ in range(2):  # twice: strategies are reused between turns
        repl.handle_line("abc abc abc")
    assert not repl.errors, repl.errors
    assert len(repl.last_runs) == len(repl.settings.modes())
    assert all(run.new_tokens > 0 for run in repl.last_runs)


def test_speculative_text_equals_target_text_and_is_streamed(bundle):
    repl, out = make_repl(bundle, run_target=True, max_new_tokens=24)
    repl.handle_line("the cat the cat the cat")
    target, speculative = repl.last_runs
    assert speculative.stats is not None and target.stats is None
    assert speculative.text == target.text  # greedy speculative decoding is lossless
    assert out.getvalue().count(target.text) >= 2  # both replies were streamed, without rejected drafts mixed in


def test_eof_ends_the_session_with_0(bundle):
    repl, _ = make_repl(bundle, "/length 3\n")
    assert repl.run() == 0 and repl.settings.max_new_tokens == 3


def test_slash_escape_sends_text(bundle):
    repl, out = make_repl(bundle)
    repl.handle_line("//etc/hosts")
    assert repl.last_prompt == "/etc/hosts" and "Unknown command" not in out.getvalue()


# ---- the live view ------------------------------------------------------------------------------------------------------
def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_live_view_colours_each_kind_of_token():
    tokenizer = char_tokenizer()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=200)
    view = LiveView(console, tokenizer)
    view.speculative = True
    view.put(torch.tensor([_ids(tokenizer, "prompt")]))  # generate streams the prompt first: skipped
    view.put(torch.tensor([_ids(tokenizer, "A")]))  # prefill token, no event: plain
    emitted = _ids(tokenizer, "BCD")
    view.put(torch.tensor([emitted]))
    view.on_step(StepEvent(tuple(_ids(tokenizer, "BCxy")), 2, tuple(emitted)))  # B, C accepted; x, y rejected; D fixes
    emitted = _ids(tokenizer, "EF")
    view.put(torch.tensor([emitted]))
    view.on_step(StepEvent(tuple(_ids(tokenizer, "E")), 1, tuple(emitted)))  # all accepted, F is the bonus
    view.end()
    text = out.getvalue()
    assert "prompt" not in text
    assert "\x1b[32mBC\x1b[0m" in text  # accepted: green
    assert "\x1b[2;9;31mxy\x1b[0m" in text  # rejected: dim red struck through
    assert "\x1b[1;33mD\x1b[0m" in text  # correction: yellow
    assert "\x1b[1;36mF\x1b[0m" in text  # bonus: cyan
    assert text.startswith("A")


def _stream_one_step(view, tokenizer) -> None:
    """Prompt, prefill token 'A', then a step that drafted 'BCxy', accepted 'BC' and emitted 'BCD'."""
    view.put(torch.tensor([[5]]))
    view.put(torch.tensor([_ids(tokenizer, "A")]))
    emitted = _ids(tokenizer, "BCD")
    view.put(torch.tensor([emitted]))
    view.on_step(StepEvent(tuple(_ids(tokenizer, "BCxy")), 2, tuple(emitted)))
    view.end()


def test_live_view_without_colours_prints_only_the_reply():
    tokenizer = char_tokenizer()
    out = io.StringIO()
    view = LiveView(Console(file=out, color_system=None), tokenizer, show_rejected=False)
    view.attach(types.SimpleNamespace(step_listeners=[]))
    _stream_one_step(view, tokenizer)
    assert out.getvalue() == "ABCD\n"


def test_text_assembler_holds_back_partial_characters(byte_tokenizer):
    assembler = TextAssembler(byte_tokenizer)
    first, second = list("é".encode())
    assert assembler.append([ord("a")]) == "a"
    assert assembler.append([first]) == ""  # half a character: held back
    assert assembler.append([second]) == "é"
    assert assembler.preview([ord("b")]) == "b" and assembler.text == "aé"


def test_summary_line_reports_speedup():
    stats = GenerationStats(new_tokens=20, drafted=10, accepted=5, accepted_lengths=[2, 3])
    line = summary_line(RunSummary("speculative", 20, 1.0, stats), baseline_tokens_per_second=10.0).plain
    assert "20.0 tok/s" in line and "acceptance 50.0% (5/10)" in line and "mean accepted length 2.50" in line
    assert "speedup 2.00x vs target-only" in line


# ---- the command line -----------------------------------------------------------------------------------------------
def test_chat_main_quits_with_0(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/gamma 2\n/quit\n"))
    assert main(["chat", "--model", TINY_RANDOM, "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "gamma (num_speculative_tokens) = 2" in out and "\x1b[" not in out


def test_generate_prints_text_and_stats(capsys):
    assert main(["generate", "abc abc abc", "--model", TINY_RANDOM, "--length", "10"]) == 0
    out = capsys.readouterr().out
    assert "[speculative · ngram, K=default]" in out and "tok/s" in out


def test_generate_json(capsys):
    assert main(["generate", "abc abc", "--model", TINY_RANDOM, "--draft", TINY_RANDOM, "--strategy", "egag",
                 "--length", "10", "--compare", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [run["label"].split(" ·")[0] for run in result["runs"]] == ["target-only", "speculative"]
    assert result["runs"][1]["stats"]["new_tokens"] == result["runs"][1]["new_tokens"]
    assert result["runs"][0]["text"] == result["runs"][1]["text"] and result["speedup"] > 0


def test_generate_reports_bad_model_dir(capsys, tmp_path):
    assert main(["generate", "x", "--model", str(tmp_path / "missing")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_eval_forwards_arguments(monkeypatch):
    seen = []
    module = types.ModuleType("hf_specdec.eval")
    module.main = lambda argv=None: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "hf_specdec.eval", module)
    assert main(["eval", "--suite", "code", "-n", "3"]) == 0
    assert seen == [["--suite", "code", "-n", "3"]]


def test_eval_missing_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hf_specdec.eval", None)  # makes the import fail
    assert main(["eval", "--help"]) == 2
    assert "evaluation suite" in capsys.readouterr().err


# ---- a real pseudo-terminal ---------------------------------------------------------------------------------------------
def test_pty_session_streams_coloured_tokens():
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "hf_specdec.cli", "chat", "--model", TINY_RANDOM, "--length", "30"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect(">>> ")
        assert "accepted draft" in child.before  # the colour legend
        child.sendline("hello hello hello")
        child.expect(r"tok/s[^\n]*\n")
        streamed = child.before
        # drafted tokens appear coloured: accepted green, or rejected struck through and the correction yellow
        assert "\x1b[32m" in streamed or ("\x1b[2;9;31m" in streamed and "\x1b[1;33m" in streamed)
        assert "acceptance" in child.after
        child.expect(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_eagle_when_available(bundle, tmp_path):
    import hf_specdec

    assert bundle.eagle_dir is None and bundle.medusa_dir is None  # the committed ones do not fit the tiny model
    repl, out = make_repl(bundle)
    assert not repl.run_command("/eagle") and "recipes/train_eagle.py" in out.getvalue()
    torch.manual_seed(0)
    hf_specdec.EagleDrafter(hf_specdec.EagleDrafterConfig.for_target(bundle.target.config)).save_pretrained(tmp_path)
    repl, out = make_repl(dataclasses.replace(bundle, eagle_dir=tmp_path))
    assert repl.run_command("/eagle") and repl.settings.drafter == "eagle"
    repl.handle_line("abc abc abc")
    assert not repl.errors and isinstance(repl.strategies.get(repl.settings, repl.bundle), hf_specdec.EagleStrategy)


def test_medusa_when_available(bundle, monkeypatch, tmp_path):
    import hf_specdec
    from hf_specdec.strategies import NGramStrategy

    class FakeHeads(torch.nn.Module):
        @classmethod
        def from_pretrained(cls, path):
            assert Path(path) == tmp_path
            return cls()

    class FakeMedusa(NGramStrategy):  # stands in for hf_specdec.MedusaStrategy(heads, **overrides)
        def __init__(self, heads, **overrides):
            assert isinstance(heads, FakeHeads)
            super().__init__(**overrides)

    monkeypatch.setattr(hf_specdec, "MedusaStrategy", FakeMedusa, raising=False)
    monkeypatch.setattr(hf_specdec, "MedusaHeads", FakeHeads, raising=False)
    repl, out = make_repl(dataclasses.replace(bundle, medusa_dir=None))
    assert not repl.run_command("/medusa") and "no heads folder" in out.getvalue()
    repl, out = make_repl(dataclasses.replace(bundle, medusa_dir=tmp_path))
    assert repl.run_command("/medusa") and repl.settings.drafter == "medusa"
    repl.handle_line("abc abc abc")
    assert not repl.errors and isinstance(repl.strategies.get(repl.settings, repl.bundle), FakeMedusa)


@pytest.mark.parametrize("argv", [["generate", "x", "--strategy", "egag"], ["generate", "x", "--strategy", "drafter"],
                                  ["chat", "--drafter", "draft_model"]])
def test_cli_refuses_drafters_it_cannot_run(argv, capsys):
    assert main([*argv, "--model", TINY_RANDOM]) == 2
    err = capsys.readouterr().err
    assert "--draft DIR" in err


def test_cli_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--model", TINY_RANDOM, "--gamma", "0"])
    assert exit_info.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err


def test_debug_trace_names_each_part():
    tokenizer = char_tokenizer()
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, color_system="standard", width=200), tokenizer, debug=True)
    view.speculative = True
    _stream_one_step(view, tokenizer)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("'A'") and "prefill" in lines[0]
    assert "drafted  4, accepted  2" in lines[1] and "\x1b[32m'BC'\x1b[0m" in lines[1]
    assert "\x1b[2;9;31m'xy'\x1b[0m" in lines[1] and "\x1b[1;33m'D'\x1b[0m" in lines[1]
    assert "ok \x1b" in lines[1]  # the labels themselves are not dimmed


def test_demo_prints_the_table_and_writes_the_png(capsys, tmp_path, monkeypatch):
    """`hf-specdec demo` end to end on the tiny model: every method timed, outputs checked, a PNG written under
    results/ (not into the working directory itself), progress printed although stdout is no terminal, the table
    readable at 80 columns. The committed heads are skipped: they were made for another target."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["demo", "--model", TINY_RANDOM, "--code", "1", "--prose", "1", "--max-new-tokens", "12",
                 "--no-color"]) == 0
    out = capsys.readouterr().out
    for method in ("plain", "transformers-lookup", "ngram", "nasd"):
        assert method in out
    assert "hydra" not in out and "2/2" in out
    assert "prompt 1/2: code" in out and "prompt 2/2: prose" in out  # progress, one line per prompt
    assert "tok/step" in out and "same" in out and max(len(line) for line in out.splitlines()) <= 80
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    assert (tmp_path / "results" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    png = tmp_path / "elsewhere.png"
    assert main(["demo", "--model", TINY_RANDOM, "--code", "1", "--prose", "0", "--max-new-tokens", "4",
                 "--out", str(png), "--no-color"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and str(png) in capsys.readouterr().out


def test_demo_plot_title_names_the_run_and_the_output_check():
    from hf_specdec.demo import _plot_title

    row = {"identical_outputs": 2, "prompts": 2}
    report = {"code": {"plain": row, "ngram": row}, "prose": {"plain": row, "ngram": {**row, "identical_outputs": 1}}}
    title = _plot_title(report, "tiny", 12)
    assert title.startswith("tiny, greedy, 12 new tokens, 2 code, 2 prose prompts") and "NOT all outputs" in title
    report["prose"]["ngram"] = row
    assert "\nall outputs identical to plain generate" in _plot_title(report, "tiny", 12)


def test_generate_help_lists_hydra_and_explains_draft_and_the_chat_template(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "hydra" in text and "/draft_model" not in text and "needed by the draft_model" in text
    assert "code prompt" in text  # --no-chat-template says why a code prompt gets prose back


def test_generate_hydra_uses_the_hydra_folder(monkeypatch):
    """`--strategy hydra` is the Medusa drafter over the committed Hydra heads."""
    import hf_specdec.cli as cli

    seen = {}

    def load(args):  # stop before loading any model: only the folder choice is checked
        seen["medusa"] = args.medusa
        raise ValueError("stopped")

    monkeypatch.setattr(cli, "_load", load)
    assert main(["generate", "x", "--model", TINY_RANDOM, "--strategy", "hydra"]) == 2
    assert seen["medusa"].endswith("heads/hydra-smollm2-135m")

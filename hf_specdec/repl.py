"""The chat REPL: type text to generate, type `/commands` to change settings between turns.

`Repl.handle_line(line)` does everything one input line asks and returns False once the session should end, so
tests drive the REPL line by line with an injected input stream and a rich `Console` writing to a buffer.
A command validates all its arguments before changing anything: a bad command prints why and changes nothing.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .cli_models import ModelBundle
from .live_view import LiveView, RunSummary, legend, summary_line
from .session import (PROCESSORS, ChatSettings, StrategyCache, learned_drafter_unavailable, run_generation,
                      settings_rows)

PROMPT = ">>> "


class CommandError(ValueError):
    """A command that cannot be applied; the message says why and what to type instead."""


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    apply: Callable[[Repl, ChatSettings, list[str]], str | None]  # mutates the settings copy; returns a message


# ---- argument parsing helpers ---------------------------------------------------------------------------------------
def _no_args(name: str, args: list[str]) -> None:
    if args:
        raise CommandError(f"/{name} takes no arguments.")


def _int_arg(name: str, args: list[str], minimum: int = 1) -> int:
    if len(args) != 1:
        raise CommandError(f"/{name} needs one integer, e.g. /{name} {max(minimum, 4)}.")
    try:
        value = int(args[0])
    except ValueError:
        raise CommandError(f"/{name}: {args[0]!r} is not an integer.") from None
    if value < minimum:
        raise CommandError(f"/{name}: must be >= {minimum}, got {value}.")
    return value


def _float_arg(name: str, text: str, low: float, high: float, low_open: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"/{name}: {text!r} is not a number.") from None
    if not ((low < value) if low_open else (low <= value)) or value > high:
        bracket = "(" if low_open else "["
        raise CommandError(f"/{name}: must be in {bracket}{low:g}, {high:g}], got {value:g}.")
    return value


def _on_off(value: bool) -> str:
    return "on" if value else "off"


# ---- command handlers: (repl, settings copy, args) -> message ---------------------------------------------------------
def _toggle_mode(mode: str) -> Callable[[Repl, ChatSettings, list[str]], str]:
    def apply(repl: Repl, s: ChatSettings, args: list[str]) -> str:
        _no_args(mode, args)
        if mode == "drafter" and repl.bundle.draft is None:
            raise CommandError("/drafter generates with the draft model alone, and there is none: start the CLI with "
                               "--draft DIR. (n-gram drafters cannot generate text on their own.)")
        attr = f"run_{mode}"
        setattr(s, attr, not getattr(s, attr))
        target_auto = repl.target_auto and mode != "target"
        if mode == "speculative":  # toggles speculative vs target-only
            if not s.run_speculative and not s.modes():
                s.run_target, target_auto = True, True
            elif s.run_speculative and target_auto:
                s.run_target, target_auto = False, False
        if not s.modes():
            raise CommandError(f"/{mode}: at least one of /speculative, /target, /drafter must stay on.")
        repl.target_auto = target_auto
        return f"{mode} generation {_on_off(getattr(s, attr))}; each prompt runs: {', '.join(s.modes())}."
    return apply


def _select_drafter(drafter: str) -> Callable[[Repl, ChatSettings, list[str]], str]:
    def apply(repl: Repl, s: ChatSettings, args: list[str]) -> str:
        _no_args(drafter, args)
        if drafter == "draft_model" and repl.bundle.draft is None:
            raise CommandError("No draft model: start the CLI with --draft DIR.")
        if reason := learned_drafter_unavailable(drafter, repl.bundle):
            raise CommandError(reason)
        note = ""
        if drafter != "draft_model" and s.egag:
            s.egag, note = False, " (EGAG off: it needs the draft model)"
        s.drafter = drafter
        return f"drafter: {drafter}{note}."
    return apply


def _set_int(attr: str, name: str, minimum: int = 1) -> Callable[[Repl, ChatSettings, list[str]], str]:
    def apply(repl: Repl, s: ChatSettings, args: list[str]) -> str:
        setattr(s, attr, _int_arg(name, args, minimum))
        return f"{attr} = {getattr(s, attr)}."
    return apply


def _gamma(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    if args == ["default"]:
        s.gamma = None
        return "gamma: each strategy's default (n-gram/NASD 10, draft model 5)."
    s.gamma = _int_arg("gamma", args)
    return f"gamma (num_speculative_tokens) = {s.gamma}."


def _egag(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    _no_args("egag", args)
    if repl.bundle.draft is None:
        raise CommandError("EGAG (entropy-guided adaptive gamma) reads the draft model's entropy; n-gram drafters have "
                           "no distribution. Start the CLI with --draft DIR to use it.")
    s.egag = not s.egag
    if s.egag:
        s.drafter = "draft_model"
        return (f"EGAG on (drafter: draft model, K in [{s.egag_gamma_min}, {s.egag_gamma_max}], "
                f"ema {s.egag_ema:g}).")
    return "EGAG off (constant K)."


def _egag_bound(attr: str) -> Callable[[Repl, ChatSettings, list[str]], str]:
    def apply(repl: Repl, s: ChatSettings, args: list[str]) -> str:
        setattr(s, attr, _int_arg(attr, args))
        if s.egag_gamma_min > s.egag_gamma_max:
            raise CommandError(f"/{attr}: need egag_gamma_min <= egag_gamma_max (now {s.egag_gamma_min} > "
                               f"{s.egag_gamma_max}); change the other bound first.")
        return f"{attr} = {getattr(s, attr)}."
    return apply


def _egag_ema(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    if len(args) != 1:
        raise CommandError("/egag_ema needs one number in (0, 1], e.g. /egag_ema 0.5.")
    s.egag_ema = _float_arg("egag_ema", args[0], 0.0, 1.0)
    return f"egag_ema = {s.egag_ema:g}."


_PROCESSOR_ARGS = {"greedy": (), "multinomial": ("temperature",), "topk": ("temperature", "k"),
                   "nucleus": ("temperature", "p"), "topknucleus": ("temperature", "k", "p")}


def _processor(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    if not args or args[0] not in PROCESSORS:
        raise CommandError(f"/processor needs one of {', '.join(PROCESSORS)}, e.g. /processor topk 0.8 20.")
    name, values = args[0], args[1:]
    names = _PROCESSOR_ARGS[name]
    if len(values) > len(names):
        raise CommandError(f"/processor {name} takes at most {len(names)} argument(s): {' '.join(names) or 'none'}.")
    for arg_name, text in zip(names, values):
        if arg_name == "temperature":
            s.temperature = _float_arg("processor", text, 0.0, 100.0)
        elif arg_name == "k":
            s.top_k = _int_arg("processor", [text])
        else:
            s.top_p = _float_arg("processor", text, 0.0, 1.0)
    s.processor = name
    return f"processor: {s.processor_label()}."


def _ngram_storage(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    if not 1 <= len(args) <= 2 or args[0] not in ("basic", "onelevel"):
        raise CommandError("/set_ngramstorage needs basic|onelevel and optionally n, e.g. /set_ngramstorage onelevel 4.")
    s.ngram_storage = args[0]
    if len(args) == 2:
        s.ngram_size = _int_arg("set_ngramstorage", args[1:], minimum=2)
    return f"NASD store: {s.ngram_storage}, n = {s.ngram_size}{_nasd_note(s)}."


def _nasd_note(s: ChatSettings) -> str:
    return "" if s.drafter == "nasd" else " (used once you pick /nasd)"


def _toggle(attr: str, label: str, nasd: bool = False) -> Callable[[Repl, ChatSettings, list[str]], str]:
    def apply(repl: Repl, s: ChatSettings, args: list[str]) -> str:
        _no_args(attr, args)
        setattr(s, attr, not getattr(s, attr))
        return f"{label}: {_on_off(getattr(s, attr))}{_nasd_note(s) if nasd else ''}."
    return apply


def _top_k_filler(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    s.top_k_filler = _int_arg("top_k_filler", args)
    return f"top_k_filler = {s.top_k_filler}{_nasd_note(s)}."


def _show(repl: Repl, s: ChatSettings, args: list[str]) -> None:
    _no_args("show", args)
    table = Table(title="settings", show_edge=False)
    for column in ("setting", "value", "meaning"):
        table.add_column(column)
    for row in settings_rows(s):
        table.add_row(*row)
    repl.console.print(table)
    bundle = repl.bundle
    repl.console.print(f"target: {bundle.target_name}; draft: {bundle.draft_name or 'none'}; medusa heads: "
                       f"{bundle.medusa_dir or 'none'}; eagle drafter: {bundle.eagle_dir or 'none'}", highlight=False)


def _stats(repl: Repl, s: ChatSettings, args: list[str]) -> str | None:
    _no_args("stats", args)
    if not repl.last_runs:
        return "No reply yet: type a prompt first."
    for run in repl.last_runs:
        repl.console.print(summary_line(run, repl.baselines.get(repl.last_prompt)), soft_wrap=True)
        if run.stats is not None:
            table = Table(show_header=False, show_edge=False, box=None)
            for key, value in run.stats.to_dict().items():
                if key != "accepted_lengths":
                    table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
            table.add_row("accepted_lengths", " ".join(map(str, run.stats.accepted_lengths)))
            repl.console.print(table)
    return None


def _help(repl: Repl, s: ChatSettings, args: list[str]) -> None:
    if len(args) > 1:
        raise CommandError("/help takes at most one command name, e.g. /help gamma.")
    if args:
        command = COMMANDS.get(args[0].lstrip("/"))
        if command is None:
            raise CommandError(f"No command /{args[0].lstrip('/')}; type /help for the list.")
        repl.console.print(f"{command.usage}\n  {command.help}", highlight=False, markup=False)
        return
    table = Table(show_header=False, show_edge=False, box=None)
    for command in COMMANDS.values():
        table.add_row(Text(command.usage, style="bold"), command.help)
    repl.console.print(Text("Type text to generate a reply. Commands:"))
    repl.console.print(table)


def _quit(repl: Repl, s: ChatSettings, args: list[str]) -> str:
    _no_args("quit", args)
    repl.running = False
    return "Bye."


def _commands() -> dict[str, Command]:
    specs = [
        ("help", "/help [command]", "List the commands, or explain one.", _help),
        ("show", "/show", "Print every setting.", _show),
        ("speculative", "/speculative", "Toggle speculative vs target-only generation (speculative at start).",
         _toggle_mode("speculative")),
        ("target", "/target", "Toggle generating with the target alone too (the baseline for the speedup).",
         _toggle_mode("target")),
        ("drafter", "/drafter", "Toggle generating with the draft model alone too (needs --draft).",
         _toggle_mode("drafter")),
        ("ngram", "/ngram", "Draft by prompt lookup (n-gram matching).", _select_drafter("ngram")),
        ("nasd", "/nasd", "Draft from NASD's n-gram store fed with the target's top-k.", _select_drafter("nasd")),
        ("draft_model", "/draft_model", "Draft with the draft model (needs --draft).", _select_drafter("draft_model")),
        ("medusa", "/medusa", "Draft with Medusa heads (needs trained heads, --medusa DIR).", _select_drafter("medusa")),
        ("eagle", "/eagle", "Draft with the EAGLE drafter (needs a trained drafter, --eagle DIR).",
         _select_drafter("eagle")),
        ("length", "/length N", "Generate at most N new tokens per reply.", _set_int("max_new_tokens", "length")),
        ("gamma", "/gamma N|default", "Draft length K (num_speculative_tokens).", _gamma),
        ("egag", "/egag", "Toggle entropy-guided adaptive gamma (draft model only).", _egag),
        ("egag_gamma_min", "/egag_gamma_min N", "EGAG: smallest K.", _egag_bound("egag_gamma_min")),
        ("egag_gamma_max", "/egag_gamma_max N", "EGAG: largest K.", _egag_bound("egag_gamma_max")),
        ("egag_ema", "/egag_ema X", "EGAG: EMA weight of the newest step, in (0, 1].", _egag_ema),
        ("processor", "/processor NAME [temperature] [k] [p]",
         "Sampling: greedy | multinomial T | topk T k | nucleus T p | topknucleus T k p.", _processor),
        ("top_k_filler", "/top_k_filler N", "NASD: target top-k tokens added to the store per step.", _top_k_filler),
        ("set_ngramstorage", "/set_ngramstorage basic|onelevel [N]", "NASD: store layout and n.", _ngram_storage),
        ("reset_in_between", "/reset_in_between", "NASD: toggle emptying the store before each reply.",
         _toggle("reset_in_between", "reset NASD store between replies", nasd=True)),
        ("cache", "/cache", "Toggle the KV cache for the target-only baseline.", _toggle("use_cache", "KV cache")),
        ("debug", "/debug", "Toggle a per-step trace (drafted, accepted, target token).", _toggle("debug", "debug")),
        ("stats", "/stats", "Detailed statistics of the last reply.", _stats),
        ("quit", "/quit", "Leave (Ctrl-D works too).", _quit),
    ]
    return {name: Command(name, usage, text, apply) for name, usage, text, apply in specs}


COMMANDS = _commands()
ALIASES = {"exit": "quit", "q": "quit", "h": "help", "?": "help"}


class Repl:
    """A chat session. `run()` reads lines until `/quit` or end of input; `handle_line` processes one line."""

    def __init__(self, bundle: ModelBundle, console: Console, settings: ChatSettings | None = None,
                 input_stream: TextIO | None = None, echo: bool | None = None) -> None:
        self.bundle = bundle
        self.console = console
        self.settings = settings or ChatSettings(drafter="draft_model" if bundle.draft is not None else "ngram")
        self.input_stream = input_stream if input_stream is not None else sys.stdin
        self.interactive = _isatty(self.input_stream)
        self.echo = (not self.interactive) if echo is None else echo
        self.running = True
        self.strategies = StrategyCache()
        self.baselines: dict[str, float] = {}  # prompt -> tokens/s of its latest target-only run
        self.last_runs: list[RunSummary] = []
        self.last_prompt: str | None = None
        self.errors: list[str] = []  # generation failures of the latest prompt
        self.target_auto = False  # /speculative turned the target-only run on (and will turn it off again)

    @property
    def colors(self) -> bool:
        """True when the console shows styles (a terminal, colours not turned off)."""
        console = self.console
        return console.is_terminal and console.color_system is not None and not console.no_color

    # ---- one line -------------------------------------------------------------------------------------------------
    def handle_line(self, line: str) -> bool:
        """Runs one input line; returns False when the session should end."""
        line = line.strip()
        if not line:
            return self.running
        if line.startswith("/") and not line.startswith("//"):
            self.run_command(line)
        else:
            self.generate(line[1:] if line.startswith("//") else line)
        return self.running

    def run_command(self, line: str) -> bool:
        """Applies a command to a copy of the settings and keeps the copy only if the command succeeded."""
        parts = line[1:].split() or [""]
        name, args = ALIASES.get(parts[0].lower(), parts[0].lower()), parts[1:]
        command = COMMANDS.get(name)
        if command is None:
            self.console.print(Text(f"Unknown command {line.split()[0]!r}. Type /help for the list "
                                    "(start a prompt with // to send text beginning with '/').", style="red"))
            return False
        settings = dataclasses.replace(self.settings)
        try:
            message = command.apply(self, settings, args)
        except CommandError as error:
            self.console.print(Text(f"{error} Nothing changed. Usage: {command.usage}", style="red"))
            return False
        self.settings = settings
        if message:
            self.console.print(Text(message, style="cyan"))
        return True

    def generate(self, prompt: str) -> None:
        """Runs every enabled mode on `prompt`, streaming each reply and printing its summary line."""
        input_ids = self.bundle.encode(prompt)
        runs, self.errors = [], []
        for mode in self.settings.modes():
            try:
                runs.append(self._generate_one(prompt, input_ids, mode))
            except KeyboardInterrupt:
                self.console.print(Text("\n(interrupted)", style="yellow"))
                break
            except (ValueError, RuntimeError, TypeError) as error:
                self.errors.append(f"{mode}: {error}")
                self.console.print(Text(f"\n{mode} generation failed: {error}", style="red"))
        self.last_runs, self.last_prompt = runs, prompt

    def _generate_one(self, prompt: str, input_ids, mode: str) -> RunSummary:
        strategy = self.strategies.get(self.settings, self.bundle) if mode == "speculative" else None
        view = LiveView(self.console, self.bundle.tokenizer, show_rejected=self.colors, debug=self.settings.debug)
        run, _ = run_generation(self.bundle, self.settings, input_ids, mode, view, strategy)
        if mode == "target":
            self.baselines[prompt] = run.tokens_per_second
        self.console.print(summary_line(run, self.baselines.get(prompt)), soft_wrap=True)
        return run

    # ---- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Reads and handles lines until `/quit` or end of input; returns the exit status (0)."""
        if self.interactive:
            _enable_history()
        self.banner()
        while self.running:
            line = self.read_line()
            if line is None:
                break
            try:
                self.handle_line(line)
            except KeyboardInterrupt:
                self.console.print(Text("(interrupted)", style="yellow"))
        return 0

    def read_line(self) -> str | None:
        """The next input line, or None at end of input (Ctrl-D)."""
        try:
            if self.interactive:  # input() itself prints the prompt, so readline can redraw it when editing
                return input(f"\001\x1b[1m\002{PROMPT}\001\x1b[0m\002" if self.colors else PROMPT)
            line = self.input_stream.readline()
        except EOFError:
            self.console.print()
            return None
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, keep the session
            self.console.print()
            return ""
        if not line:
            return None
        if self.echo:
            self.console.print(Text(PROMPT, style="bold") + Text(line.rstrip("\n")), highlight=False)
        return line

    def banner(self) -> None:
        draft = self.bundle.draft_name or "none"
        self.console.print(Text(f"hf_specdec chat · target {self.bundle.target_name} · draft {draft} · "
                                f"{self.settings.drafter_label()} · {self.settings.processor_label()}", style="bold"))
        if self.colors:
            self.console.print(legend())
        self.console.print(Text("Type a prompt, /help for commands, /quit to leave.", style="dim"))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _enable_history() -> None:
    """Arrow-key history for `input()` where the platform has readline."""
    try:
        import readline  # noqa: F401
    except ImportError:
        pass

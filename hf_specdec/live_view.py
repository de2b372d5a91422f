"""The CLI's live token view: streams a reply with accepted, rejected and target-chosen tokens told apart.

`LiveView` is both a Transformers streamer (it receives every emitted token through `put`) and a strategy step
listener (it receives a `StepEvent` after each verify step, right after that step's `put`). Tokens that arrive
without an event (the prefill token, or every token of a plain `generate`) are shown as plain target tokens.
Text pieces come from decoding the whole reply so far, so multi-token characters and word boundaries come out
right.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.text import Text
from transformers import PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from .stats import GenerationStats, StepEvent

STYLES = {
    "plain": "",
    "accepted": "green",
    "rejected": "dim red strike",
    "corrected": "bold yellow",
    "bonus": "bold cyan",
    "trace": "dim",
}

LEGEND = (("accepted", "accepted draft"), ("rejected", "rejected draft"), ("corrected", "target correction"),
          ("bonus", "bonus token"))


def legend() -> Text:
    """One line naming the colours of the live view."""
    text = Text("tokens: ")
    for index, (kind, label) in enumerate(LEGEND):
        text.append(("  " if index else "") + label, style=STYLES[kind])
    return text


class TextAssembler:
    """Decodes a growing token list and hands out the new text each time.

    Text ending in an incomplete character (U+FFFD from a partial UTF-8 byte sequence) is held back until the next
    tokens complete it, or until `flush`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.shown = ""  # the text handed out so far

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _new_text(self, text: str) -> str:
        if text.startswith(self.shown):
            return text[len(self.shown):]
        common = 0  # decoding changed earlier text (rare): hand out what follows the shared prefix
        while common < min(len(text), len(self.shown)) and text[common] == self.shown[common]:
            common += 1
        return text[common:]

    def append(self, tokens: list[int]) -> str:
        """Adds `tokens` to the reply and returns the newly complete text."""
        self.tokens.extend(tokens)
        text = self._decode(self.tokens)
        stable = text.rstrip("\ufffd")
        piece = self._new_text(stable)
        self.shown = stable if stable.startswith(self.shown) else self.shown + piece
        return piece

    def preview(self, tokens: list[int]) -> str:
        """The text `tokens` would add after the reply so far, without adding them (for rejected drafts)."""
        if not tokens:
            return ""
        return self._new_text(self._decode(self.tokens + tokens)) or self._decode(tokens)

    def flush(self) -> str:
        """Whatever was held back (an incomplete character at the very end)."""
        text = self._decode(self.tokens)
        piece = self._new_text(text)
        self.shown = text
        return piece

    @property
    def text(self) -> str:
        return self._decode(self.tokens)


class LiveView(BaseStreamer):
    """Prints a reply as it is generated. Pass it as `streamer=` and, for a strategy, call `attach(strategy)`.

    show_rejected: print rejected drafted tokens (struck through); only sensible with colours, else they would read
        as part of the reply. debug: one line per step (drafted, accepted, what the target added).
    """

    def __init__(self, console: Console, tokenizer: PreTrainedTokenizerBase, *, show_rejected: bool = True,
                 debug: bool = False) -> None:
        self.console = console
        self.text = TextAssembler(tokenizer)
        self.show_rejected = show_rejected
        self.debug = debug
        self.speculative = False
        self.steps = 0
        self._prompt_seen = False
        self._pending: list[int] = []  # tokens put but not yet explained by a step event
        self._line_open = False  # text was written since the last newline

    def attach(self, strategy) -> None:
        """Listen to `strategy`'s steps (until `detach`)."""
        self.speculative = True
        strategy.step_listeners.append(self.on_step)

    def detach(self, strategy) -> None:
        if self.on_step in strategy.step_listeners:
            strategy.step_listeners.remove(self.on_step)

    # ---- streamer interface ---------------------------------------------------------------------------------
    def put(self, value) -> None:
        tokens = [int(t) for t in value.reshape(-1).tolist()]
        if not self._prompt_seen:  # generate streams the prompt first
            self._prompt_seen = True
            return
        self._flush_pending()
        if self.speculative:
            self._pending = tokens
        else:
            self._show_plain(tokens)

    def end(self) -> None:
        self._flush_pending()
        self._write(Text(self.text.flush()))
        if self._line_open:
            self.console.print()
            self._line_open = False

    # ---- step listener ----------------------------------------------------------------------------------------
    def on_step(self, event: StepEvent) -> None:
        self._pending = []
        self.steps += 1
        accepted = list(event.emitted[: event.num_accepted])
        own = list(event.emitted[event.num_accepted: event.num_accepted + 1])  # the target's token, if emitted
        rejected = list(event.drafted[event.num_accepted:]) if event.corrected else []
        accepted_text = self.text.append(accepted)
        rejected_text = self.text.preview(rejected)
        own_text = self.text.append(own)
        kind = "corrected" if event.corrected else ("bonus" if event.drafted else "plain")
        if self.debug:
            self._trace(event, accepted_text, rejected_text, own_text, kind if own else "stopped")
            return
        line = Text()
        line.append(accepted_text, style=STYLES["accepted"])
        if self.show_rejected:
            line.append(rejected_text, style=STYLES["rejected"])
        line.append(own_text, style=STYLES[kind])
        self._write(line)

    def _trace(self, event: StepEvent, accepted: str, rejected: str, own: str, kind: str) -> None:
        """One debug line per step: counts, then each part quoted so it reads without colours too."""
        self._end_line()
        line = Text()
        line.append(f"  step {self.steps:>3}: drafted {len(event.drafted):>2}, accepted {event.num_accepted:>2}  ",
                    style=STYLES["trace"])
        if event.drafted:
            line.append("ok ")
            line.append(repr(accepted), style=STYLES["accepted"])
        if rejected:
            line.append("  rejected ")
            line.append(repr(rejected), style=STYLES["rejected"])
        label = {"plain": "target", "stopped": "stopped"}.get(kind, kind)
        line.append(f"  {label} ")
        line.append(repr(own), style=STYLES.get(kind, ""))
        self.console.print(line, highlight=False, soft_wrap=True)

    # ---- helpers --------------------------------------------------------------------------------------------------
    def _flush_pending(self) -> None:
        if self._pending:
            tokens, self._pending = self._pending, []
            self._show_plain(tokens)

    def _show_plain(self, tokens: list[int]) -> None:
        piece = Text(self.text.append(tokens), style=STYLES["plain"])
        if self.debug and self.speculative:
            self._end_line()
            line = Text()
            line.append("  prefill:  target ", style=STYLES["trace"])
            line.append(repr(piece.plain))
            self.console.print(line, highlight=False, soft_wrap=True)
        else:
            self._write(piece)

    def _write(self, text: Text) -> None:
        if text.plain:
            self.console.print(text, end="", highlight=False, soft_wrap=True)
            self._line_open = not text.plain.endswith("\n")

    def _end_line(self) -> None:
        if self._line_open:
            self.console.print()
            self._line_open = False


@dataclass
class RunSummary:
    """What the one-line summary after a reply reports."""

    label: str
    new_tokens: int
    seconds: float
    stats: GenerationStats | None = None  # speculative runs only
    text: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def summary_line(run: RunSummary, baseline_tokens_per_second: float | None = None) -> Text:
    """`label · N tokens in S s · X tok/s [· acceptance · mean accepted length] [· speedup vs target-only]`."""
    parts = [f"{run.new_tokens} tokens in {run.seconds:.2f} s", f"{run.tokens_per_second:.1f} tok/s"]
    if run.stats is not None:
        parts.append(f"acceptance {100 * run.stats.acceptance_rate:.1f}% ({run.stats.accepted}/{run.stats.drafted})")
        parts.append(f"mean accepted length {run.stats.mean_accepted_length:.2f}")
        if baseline_tokens_per_second:
            parts.append(f"speedup {run.tokens_per_second / baseline_tokens_per_second:.2f}x vs target-only")
        else:
            parts.append("speedup n/a (no target-only run of this prompt yet: /target)")
    line = Text()
    line.append(f"[{run.label}] ", style="bold")
    line.append(" · ".join(parts), style="dim" if run.stats is None else "")
    return line

"""The fit meter: a run's planned memory per GPU as one bar of coloured terms, the RAM it needs, the strategy
table with the planner's pick, and what to do when it does not fit. It draws what it is given (a Plan and
the strategy rows from engine.planner); it plans nothing itself."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.planner import fmt_estimate, tight_words

SEGMENTS = [("weights", "blue"), ("adapters", "green"), ("gradients", "green"), ("optimizer", "cyan"),
            ("activations", "yellow"), ("logits", "magenta"), ("overhead", "white")]
SHORT = {"gradients": "grads", "activations": "activs", "optimizer": "optim"}
BAR_WIDTH = 26


class FitMeter(Static):
    def show_message(self, title: str, lines: list) -> None:
        """No plan to draw (a CPU run, a model the planner does not know): a title and (text, style) lines."""
        out = Text()
        out.append(f"{title}\n", style="bold")
        for text, style in lines:
            out.append(text + "\n", style=style)
        self.update(out)

    def show_plan(self, model: str, plan, strategies: list, why: str, ram_needed_gib: float, ram_gib: float,
                  link_note: str | None = None, hint: str | None = None) -> None:
        out = Text()
        ratio = plan.per_gpu_peak_gib / plan.gpu_gib
        tight = plan.verdict == "tight"
        color = "green" if plan.fits and ratio < 0.9 else ("yellow" if plan.fits or tight else "red")
        out.append(f"Fit meter: {model}\n", style="bold")
        out.append(f"per GPU {plan.per_gpu_peak_gib:.1f} / {plan.gpu_gib:g} GiB"
                   f"{' TIGHT' if tight else ''}\n", style=f"bold {color}")
        self._bar(out, plan)
        m = plan.measured
        if m:  # what this box measured (engine.calibration), beside the planned figure
            speed = f", {m['tokens_per_s']:,.0f} tok/s" if m.get("tokens_per_s") else ""
            out.append(f"measured here: {m['peak_gib']:.1f} GiB{speed}\n", style="bold green")
        out.append(f"RAM {ram_needed_gib:.0f} / {ram_gib:.0f} GiB\n", style="green" if ram_needed_gib <= ram_gib else "red")
        out.append("strategies:\n")
        for row in strategies:
            mark, style = ("✓", "green") if row.fits else (("~", "yellow") if row.tight else ("✗", "red"))
            out.append(f" {mark} {row.label:<13}{row.peak_gib:5.1f} GiB{' tight' if row.tight else ''}"
                       f"{' ◀' if row.chosen else ''}\n", style=style)
        if len(strategies) > 1:
            out.append(why + "\n", style="dim")
        if link_note:
            out.append(link_note + "\n", style="yellow")
        if tight:  # under the card, but not by the planner's error margin
            out.append(tight_words(plan.per_gpu_peak_gib, plan.gpu_gib) + "\n", style="yellow")
        if plan.fits and m and m.get("max_seq_len"):
            out.append(f"longest seq {m['max_seq_len']}, max micro-batch {m['max_micro_batch']} (measured)\n",
                       style="dim")
        elif plan.fits:
            out.append(f"longest seq {plan.max_seq_len}, max micro-batch {plan.max_micro_batch}\n", style="dim")
        elif plan.suggestion:
            style = "yellow" if tight else "red"
            out.append(f"{'to fit with the margin' if tight else 'does not fit'}. ctrl+f applies all of:\n", style=style)
            for step in plan.suggestion_steps:
                out.append(f" · {step}\n", style=style)
        elif tight:
            out.append("nothing the planner can change gives it the margin.\n", style="yellow")
        else:
            out.append("does not fit on this tier", style="red")
            weights = plan.breakdown_gib["weights"]
            if weights >= 0.9 * plan.gpu_gib:  # no setting helps: say what takes the room
                out.append(f": the weights alone take {weights:.0f} GiB", style="red")
                if plan.active_params_b < plan.params_b:
                    out.append(" (a mixture of experts: every expert stays in memory)", style="red")
            out.append(".\n", style="red")
        after = " after the fix" if plan.suggestion else ""
        if plan.duration_s_estimate and m and m.get("tokens_per_s"):
            out.append(f"time: {fmt_estimate(plan.duration_s_estimate)} at the measured speed\n", style="bold")
        elif plan.duration_s_estimate:
            out.append(f"time{after}: {fmt_estimate(plan.duration_s_estimate)} on {plan.card} "
                       f"(~{plan.tokens_per_s_estimate:,} tokens/s)\n", style="bold")
        elif plan.tokens_per_s_estimate:
            out.append(f"~{plan.tokens_per_s_estimate:,} tokens/s on {plan.card}{after}\n", style="dim")
        if hint:
            out.append(hint + "\n", style="dim")
        self.update(out)

    @staticmethod
    def _bar(out: Text, plan) -> None:
        """The terms as one bar scaled to the card (or to the need, when it is larger), then a legend."""
        scale = max(plan.gpu_gib, plan.per_gpu_peak_gib)
        used = 0
        for name, style in SEGMENTS:
            n = round(plan.breakdown_gib[name] / scale * BAR_WIDTH)
            out.append("█" * n, style=style)
            used += n
        out.append("·" * max(0, round(plan.gpu_gib / scale * BAR_WIDTH) - used), style="dim")
        out.append("\n")
        for i, (name, style) in enumerate(SEGMENTS):
            out.append("■", style=style)
            out.append(f" {SHORT.get(name, name):<8} {plan.breakdown_gib[name]:4.1f}" + ("\n" if i % 2 else " "))
        out.append("\n" if len(SEGMENTS) % 2 else "")

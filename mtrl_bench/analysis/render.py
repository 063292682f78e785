"""Rendering tables as Markdown, LaTeX (booktabs) and CSV; number formatting.

A :class:`Table` holds display entries; :class:`Entry` is one cell's text with its
decorations (bold, an arrow, a seed count), so Markdown and LaTeX draw the same content.
Numbers are formatted once here: a real minus sign, no "-0.00".
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

MINUS = "\u2212"


def number(value: float, digits: int = 2, signed: bool = False) -> str:
    """``value`` rounded to ``digits``, with a real minus and never "−0.00" or "+0.00"."""
    rounded = round(float(value), digits)
    if rounded == 0:
        return f"{0:.{digits}f}"
    text = f"{rounded:+.{digits}f}" if signed else f"{rounded:.{digits}f}"
    return text.replace("-", MINUS)


def pct(value: float, digits: int = 2, signed: bool = False) -> str:
    return number(100 * value, digits, signed)


def interval_text(low: float | None, high: float | None, scale: float = 100.0,
                  digits: int = 2) -> str:
    if low is None:
        return "n/a"
    return f"[{number(scale * low, digits)}, {number(scale * high, digits)}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass
class Entry:
    """One table entry; rendered differently for Markdown and LaTeX."""

    text: str
    bold: bool = False
    mark: str = ""  # "up" / "down": significantly better / worse than the reference
    n: int | None = None  # seed count, shown as "(n=3)"

    def markdown(self) -> str:
        text = f"**{self.text}**" if self.bold else self.text
        text += {"up": " ↑", "down": " ↓"}.get(self.mark, "")
        return text + (f" (n={self.n})" if self.n is not None else "")

    def latex(self) -> str:
        text = tex_escape(self.text)
        text = f"\\textbf{{{text}}}" if self.bold else text
        text += {"up": "$^{\\uparrow}$", "down": "$^{\\downarrow}$"}.get(self.mark, "")
        return text + (f" {{\\scriptsize (n={self.n})}}" if self.n is not None else "")


MISSING = "—"

_TEX_REPLACEMENTS = {
    "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
    "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
    "<": "\\textless{}", ">": "\\textgreater{}", "|": "\\textbar{}",
    "±": "$\\pm$", "—": "---", "–": "--", MINUS: "$-$", "Δ": "$\\Delta$", "≥": "$\\geq$",
    "≤": "$\\leq$", "↑": "$\\uparrow$", "↓": "$\\downarrow$", "×": "$\\times$",
    "…": "\\ldots{}", "β": "$\\beta$", "λ": "$\\lambda$", "α": "$\\alpha$", "→": "$\\to$",
    "ḡ": "$\\bar{g}$", "⊙": "$\\odot$",
}


def tex_escape(text: str) -> str:
    """LaTeX-safe text (OT1-safe: '<' would print as '¡'); non-ASCII not mapped becomes '?'."""
    return "".join(_TEX_REPLACEMENTS.get(ch, ch if ch.isascii() else "?") for ch in text)


@dataclass
class Table:
    """A titled table with grouped columns and notes.

    ``title`` names what the table shows, without a number (LaTeX numbers its captions);
    ``source`` says which table of the paper it mirrors, if any.
    """

    name: str  # file stem and LaTeX label
    title: str
    columns: list[tuple[str, str]]  # (group, name); groups become a spanning header row
    rows: list[list]  # entries are Entry or str
    notes: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def caption(self) -> str:
        return f"{self.title} ({self.source})" if self.source else self.title

    def markdown(self) -> str:
        from tabulate import tabulate

        headers = [f"{group} {name}".strip() for group, name in self.columns]
        body = [[c.markdown() if isinstance(c, Entry) else c for c in row] for row in self.rows]
        table = tabulate(body or [[MISSING] * len(headers)], headers=headers, tablefmt="pipe",
                         disable_numparse=True)
        notes = "".join(f"\n- {note}" for note in self.notes)
        return f"### {self.caption}\n\n{table}\n{notes}\n"

    def latex(self) -> str:
        """A ``table`` float with a booktabs ``tabular`` (needs \\usepackage{booktabs})."""
        lines = [
            "\\begin{table}[t]", "\\centering", "\\small",
            f"\\caption{{{tex_escape(self.caption)}}}",
            f"\\label{{tab:{self.name}}}",
            f"\\begin{{tabular}}{{l{'c' * (len(self.columns) - 1)}}}", "\\toprule",
        ]
        if any(group for group, _ in self.columns):
            spans: list[list] = []
            for group, _ in self.columns:
                if spans and spans[-1][0] == group:
                    spans[-1][1] += 1
                else:
                    spans.append([group, 1])
            heads, rules, start = [], [], 1
            for group, width in spans:
                heads.append(f"\\multicolumn{{{width}}}{{c}}{{{tex_escape(group)}}}"
                             if width > 1 else tex_escape(group))
                if group:
                    rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
                start += width
            lines.append(" & ".join(heads) + " \\\\")
            lines.append(" ".join(rules))
        lines.append(" & ".join(tex_escape(name) for _, name in self.columns) + " \\\\")
        lines.append("\\midrule")
        for row in self.rows:
            lines.append(" & ".join(
                c.latex() if isinstance(c, Entry) else tex_escape(c) for c in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        if self.notes:
            lines.append("\\par\\smallskip\\footnotesize")
            lines += [tex_escape(note) + "\\par" for note in self.notes]
        lines.append("\\end{table}")
        return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """CSV of ``rows``; undefined values (None, NaN) are empty fields, never 0."""
    import pandas as pd

    buffer = io.StringIO()
    frame = pd.DataFrame(rows)
    frame.to_csv(buffer, index=False, float_format="%.10g")
    return buffer.getvalue()


def nan_if_none(value, scale: float = 1.0) -> float:
    """CSV value: undefined statistics (one seed) become an empty field, not 0."""
    return math.nan if value is None else scale * value

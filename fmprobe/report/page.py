"""The report page: one self-contained HTML file (figures inline as SVG, styles inline), laid
out to read on a laptop and a phone: figures scale to the column, panels wrap into a grid, wide
tables scroll inside their own box, legends are HTML that wraps."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

TALL_ROWS = 25  # longer tables scroll inside a box of about this many rows
_SVG_SIZE = re.compile(r'<svg([^>]*?)\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"')


@dataclass(frozen=True)
class LegendItem:
    """One entry of an HTML legend: a colour swatch (a line of ``dash`` style) and a label."""

    label: str
    colour: str = "#333333"
    dash: str = "-"


def slug(text: str) -> str:
    """``text`` as an id or file-name part: letters, digits, ``.``, ``_``, ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


def svg_of(fig: Any) -> str:
    """A matplotlib figure as inline SVG that scales to its container (text kept as text)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fmprobe"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    match = _SVG_SIZE.search(text)
    if match is None:  # pragma: no cover - matplotlib always writes both
        return text
    w, h = float(match.group(2)), float(match.group(3))
    # no fixed size: the width follows the column (up to 1.25 x the figure's own, so that a
    # lone figure is not blown up), the height the aspect ratio
    style = f"aspect-ratio: {w:.1f} / {h:.1f}; max-width: {w * 4 / 3 * 1.25:.0f}px"
    head = f'<svg{match.group(1)} class="fig" style="{style}"'
    return text[: match.start()] + head + text[match.end() :]


def _dash_array(dash: str) -> str:
    return {"--": "6,4", ":": "2,3", "-.": "6,3,2,3"}.get(dash, "")


class Page:
    """Sections, figures, legends and tables, rendered by :meth:`html` into one document."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: list[str] = []
        self.sections: list[str] = []
        self._panels: list[str] | None = None

    def section(self, title: str, intro: str = "") -> None:
        """A top-level section (``intro`` is HTML)."""
        self.sections.append(title)
        self.parts.append(f'<h2 id="{slug(title).lower()}">{html.escape(title)}</h2>')
        if intro:
            self.parts.append(f"<p>{intro}</p>")

    def heading(self, title: str) -> None:
        self.parts.append(f"<h3>{html.escape(title)}</h3>")

    def note(self, text: str) -> None:
        """A paragraph (``text`` is HTML)."""
        self.parts.append(f'<p class="note">{text}</p>')

    def figure(self, fig: Any, name: str, caption: str) -> None:
        """Embed ``fig`` (closed afterwards); inside :meth:`panels` it becomes one panel."""
        self.figures.append(name)
        block = (
            f'<figure id="fig-{len(self.figures):02d}-{slug(name)}" role="img" '
            f'aria-label="{html.escape(caption)}">{svg_of(fig)}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        (self._panels if self._panels is not None else self.parts).append(block)

    def start_panels(self) -> None:
        """Figures until :meth:`end_panels` go into one grid that wraps (never shrinks)."""
        self._panels = []

    def end_panels(self) -> None:
        panels, self._panels = self._panels or [], None
        if panels:
            self.parts.append('<div class="panels">' + "".join(panels) + "</div>")

    def legend(self, items: Sequence[LegendItem], title: str = "") -> None:
        entries = []
        for item in items:
            dash = _dash_array(item.dash)
            line = (
                f'<svg class="swatch" viewBox="0 0 28 10" aria-hidden="true"><line x1="1" '
                f'y1="5" x2="27" y2="5" stroke="{item.colour}" stroke-width="3"'
                + (f' stroke-dasharray="{dash}"' if dash else "")
                + "/></svg>"
            )
            entries.append(f"<li>{line}<span>{html.escape(item.label)}</span></li>")
        head = f"<span class='legend-title'>{html.escape(title)}</span>" if title else ""
        self.parts.append(f'<div class="legend">{head}<ul>{"".join(entries)}</ul></div>')

    def table(self, df: pd.DataFrame, caption: str = "", *, wrap: bool = False) -> None:
        """A table in its own horizontally scrolling box; ``wrap``: long cells wrap (text
        tables) instead of keeping one line (tables of numbers)."""
        body = df.to_html(
            index=False,
            na_rep="–",
            float_format=lambda v: f"{v:.4g}",
            border=0,
            classes="data wrap" if wrap else "data",
        )
        cap = f"<p class='table-caption'>{html.escape(caption)}</p>" if caption else ""
        box = "scroll tall" if len(df) > TALL_ROWS else "scroll"
        self.parts.append(f'{cap}<div class="{box}" tabindex="0">{body}</div>')

    def html(self, title: str, subtitle: str) -> str:
        toc = "".join(
            f'<li><a href="#{slug(s).lower()}">{html.escape(s)}</a></li>' for s in self.sections
        )
        return _TEMPLATE.format(
            title=html.escape(title), subtitle=subtitle, toc=toc, body="\n".join(self.parts)
        )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
*, *::before, *::after {{ box-sizing: border-box; }}
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
       max-width: 1240px; padding: 0 1em; color: #222; line-height: 1.45;
       overflow-wrap: anywhere; }}
h1 {{ margin-bottom: 0.2em; font-size: 1.7em; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }}
h3 {{ margin: 1.4em 0 0.4em; }}
.subtitle, .note, .table-caption {{ color: #555; }}
.panels {{ display: grid; gap: 1em 1.5em;
       grid-template-columns: repeat(auto-fill, minmax(min(100%, 520px), 1fr)); }}
figure {{ margin: 0.8em 0; min-width: 0; }}
figure svg.fig {{ display: block; width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: 0.88em; }}
.legend ul {{ list-style: none; padding: 0; margin: 0.3em 0; display: flex; flex-wrap: wrap;
       gap: 0.2em 1.2em; }}
.legend li {{ display: flex; align-items: center; gap: 0.4em; font-size: 0.9em; }}
.legend-title {{ font-size: 0.9em; color: #555; }}
svg.swatch {{ width: 28px; height: 10px; flex: none; }}
.scroll {{ overflow-x: auto; max-width: 100%; margin: 0.6em 0; }}
.scroll.tall {{ max-height: 42em; overflow-y: auto; border-bottom: 1px solid #ddd; }}
table.data {{ border-collapse: collapse; font-size: 0.88em; }}
table.data th, table.data td {{ padding: 0.25em 0.7em; border-bottom: 1px solid #e4e4e4;
       text-align: left; white-space: nowrap; overflow-wrap: normal; }}
table.data.wrap td {{ white-space: normal; overflow-wrap: anywhere; min-width: 8em; }}
table.data th {{ background: #f5f5f5; position: sticky; top: 0; }}
nav ul {{ columns: 2 14em; padding-left: 1.2em; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="subtitle">{subtitle}</p>
<nav><ul>{toc}</ul></nav>
{body}
</body></html>
"""

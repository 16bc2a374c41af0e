"""A report as sections of blocks, written twice: report.md (images beside it) and a self-contained
report.html (images embedded as data URIs, inline CSS, no scripts, nothing fetched from the network)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from cifarlab.storage import atomic_write_text

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 13px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #eee; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 12px; color: #555; }
.row { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
.row > * { flex: 1 1 400px; min-width: 0; }
"""


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def text(self, text: str) -> "Section":
        self.blocks.append(("text", text))
        return self

    def pre(self, text: str) -> "Section":
        self.blocks.append(("pre", text.rstrip("\n")))
        return self

    def table(self, headers: list[str], rows: list[list]) -> "Section":
        self.blocks.append(("table", headers, rows))
        return self

    def image(self, path: Path, caption: str) -> "Section":
        self.blocks.append(("image", Path(path), caption))
        return self

    def side_by_side(self, *blocks: tuple) -> "Section":
        """Blocks shown next to each other in HTML (one after the other in markdown):
        ("pre", text) or ("image", path, caption)."""
        self.blocks.append(("row", [b if b[0] != "image" else ("image", Path(b[1]), b[2]) for b in blocks]))
        return self


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def write(self, folder: Path) -> tuple[Path, Path]:
        """Write report.md and report.html into `folder`; image paths in the markdown are relative to it."""
        folder = Path(folder)
        md, page = folder / "report.md", folder / "report.html"
        atomic_write_text(md, self.markdown(folder))
        atomic_write_text(page, self.html())
        return md, page

    def markdown(self, folder: Path) -> str:
        out = [f"# {self.title}", ""]
        for section in self.sections:
            out += [f"## {section.title}", ""]
            blocks = [b for block in section.blocks for b in (block[1] if block[0] == "row" else [block])]
            for block in blocks:
                kind = block[0]
                if kind == "text":
                    out += [block[1], ""]
                elif kind == "pre":
                    out += ["```", block[1], "```", ""]
                elif kind == "table":
                    out += markdown_table(block[1], block[2]).splitlines() + [""]
                elif kind == "image":
                    out += [f"![{block[2]}]({_relative(block[1], folder)})", ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            body.append(f'<section><h2>{html.escape(section.title)}</h2>')
            for block in section.blocks:
                body.append(_html_block(block))
            body.append("</section>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _html_block(block: tuple) -> str:
    kind = block[0]
    if kind == "row":
        return '<div class="row">' + "".join(_html_block(b) for b in block[1]) + "</div>"
    if kind == "text":
        return f"<p>{html.escape(block[1])}</p>"
    if kind == "pre":
        return f"<pre>{html.escape(block[1])}</pre>"
    if kind == "table":
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>"
                       for row in block[2])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    path, caption = block[1], block[2]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return str(path)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: list[str], rows: list[list]) -> str:
    """A plain aligned table for the terminal."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"

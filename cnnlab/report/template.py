"""The page around the sections: the stylesheet, the header with its navigation, and small HTML helpers.

The page needs no network, no server and no script: a confusion-matrix cell is a link to `#cell-T-P`, and the
CSS `:target` rule shows that cell's panel of images (and only that one). Sized for a window of 1360 pixels or
more (four Grad-CAM cards a row); narrower windows wrap.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

GENERATOR = "cnnlab report"

CSS = """
:root { --fg: #1d232a; --muted: #5b6570; --line: #d9dee3; --accent: #1f77b4; --bad: #c0392b; --good: #2e8b57; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: #f6f7f9; }
header { background: #17202a; color: #fff; padding: 14px 24px 10px; }
header h1 { margin: 0 0 4px; font-size: 19px; font-weight: 600; }
header .key { margin: 0 0 8px; color: #cfd8e3; font-size: 13px; }
header nav a { color: #9fd0ff; margin-right: 14px; text-decoration: none; font-size: 13px; white-space: nowrap; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 14px 18px; margin: 16px 0;
          scroll-margin-top: 8px; }
section h2 { margin: 0 0 10px; font-size: 17px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
p.note, .muted { color: var(--muted); }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 10px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
th { background: #eef1f4; font-weight: 600; }
td.l, th.l { text-align: left; }
table.kv td:first-child { text-align: left; color: var(--muted); white-space: nowrap; }
table.kv td:last-child { text-align: left; }
pre { background: #f3f5f7; border: 1px solid var(--line); padding: 8px; overflow-x: auto; font-size: 12px;
      max-height: 420px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 8px 24px; }
img.fig { max-width: 100%; height: auto; display: block; margin: 6px 0; }
table.cm td { padding: 0; min-width: 44px; height: 38px; text-align: center; font-variant-numeric: tabular-nums; }
table.cm td a, table.cm td span { display: block; padding: 3px 4px; color: inherit; text-decoration: none; }
table.cm td a:hover { outline: 2px solid #f39c12; }
table.cm td small { display: block; font-size: 10px; opacity: .85; }
table.cm th.true { text-align: left; }
table.cm td.diag { font-weight: 600; }
.cell-panel { display: none; border-top: 2px solid var(--accent); margin-top: 10px; padding-top: 6px; }
.cell-panel:target { display: block; }
#confusion:has(.cell-panel:target) #cell-hint { display: none; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
figure.thumb { margin: 0; width: 84px; font-size: 10.5px; line-height: 1.25; }
figure.thumb img { width: 80px; height: 80px; object-fit: contain; background: #000; border: 1px solid #ccc; }
img.px { image-rendering: pixelated; }
figure.thumb figcaption { overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
figure.card { margin: 0; width: 298px; font-size: 12px; }
figure.card img { width: 298px; height: 98px; border: 1px solid #ccc; }
figure.card figcaption { overflow-wrap: anywhere; }
.bad { color: var(--bad); } .good { color: var(--good); }
.classrow { border-top: 1px solid var(--line); padding-top: 6px; margin-top: 6px; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """Numbers for people: floats with `digits` decimals, integers with thousands separators."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def kv_table(rows: Iterable[tuple[str, object]]) -> str:
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v if isinstance(v, Raw) else fmt(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


class Raw(str):
    """Already-escaped HTML (for kv_table values)."""


def table(header: list[str], rows: Iterable[list[object]], left: int = 1) -> str:
    """A table; the first `left` columns are left-aligned."""
    cls = [' class="l"' if i < left else "" for i in range(len(header))]
    head = "".join(f"<th{c}>{esc(h)}</th>" for c, h in zip(cls, header))
    body = "".join("<tr>" + "".join(f"<td{c}>{v if isinstance(v, Raw) else fmt(v)}</td>" for c, v in zip(cls, r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(src: str, alt: str, size: tuple[int, int] | None = None) -> str:
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return f'<img class="fig" src="{esc(src)}" alt="{esc(alt)}"{dims}>'


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{esc(ident)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def page(title: str, key: str, sections: list[tuple[str, str, str]], footer: str) -> str:
    """The whole document: `sections` are (id, title, html body)."""
    from cnnlab import __version__

    nav = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t, _ in sections)
    body = "\n".join(section(i, t, b) for i, t, b in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="{GENERATOR} {esc(__version__)}">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1><p class=\"key\">{key}</p><nav>{nav}</nav></header>\n"
            f"<main>\n{body}\n<p class=\"note\">{footer}</p>\n</main>\n</body></html>\n")

"""HTML building blocks for the report: escaping, number formatting, tables, the page shell and its CSS.

Every value that came from data goes through `esc` (html.escape with quote=True), in text, in attributes
and in SVG <text>; ids and anchors are built from indices, never from data. The page carries a
Content-Security-Policy that forbids scripts and any network fetch, as a second line of defence.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute (None shows as an em dash)."""
    if value is None:
        return "\u2014"
    if isinstance(value, float) and math.isnan(value):
        return "\u2014"
    return html.escape(str(value), quote=True)


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def num(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals (integers without), or an em dash when missing."""
    if is_missing(value):
        return "\u2014"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if math.isnan(f):
        return "\u2014"
    if math.isinf(f):
        return "\u221e" if f > 0 else "-\u221e"
    if f.is_integer() and abs(f) < 1e15 and digits >= 0 and not isinstance(value, float):
        return f"{int(f):,}"
    return f"{f:.{digits}f}"


def count(value: Any) -> str:
    if is_missing(value):
        return "\u2014"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return esc(value)


def pct(value: Any, digits: int = 1) -> str:
    if is_missing(value):
        return "\u2014"
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "", numeric: Sequence[int] = ()) -> str:
    """An HTML table; `rows` hold already-escaped cell HTML, `headers` are escaped here."""
    numeric_set = set(numeric)
    num_cls = ' class="n"'
    head = "".join(f"<th{num_cls if i in numeric_set else ''}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f"<td{num_cls if i in numeric_set else ''}>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def badge(passed: bool | None, *, yes: str = "pass", no: str = "FAIL") -> str:
    if passed is None:
        return '<span class="badge skip">n/a</span>'
    return f'<span class="badge pass">{esc(yes)}</span>' if passed else f'<span class="badge fail">{esc(no)}</span>'


def skipped(message: str) -> str:
    """The notice a section shows when its check did not run."""
    return f'<p class="skipped"><strong>Skipped</strong> \u2014 {esc(message)}</p>'


def section(anchor: str, title: str, body: str, *, status: str = "") -> str:
    tag = f" {status}" if status else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}{tag}</h2>{body}</section>'


def page(title: str, body: str) -> str:
    """The whole document: inline CSS, a CSP forbidding scripts and network, no external resources."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


CSS = """
:root{--pass:#16794a;--pass-bg:#e5f5ec;--fail:#b3261e;--fail-bg:#fdecea;--ink:#1d2330;--muted:#5c6577;
--line:#dde1e8;--card:#f6f7f9;--accent:#2457c5;--warn:#8a5a00;--warn-bg:#fff4d6}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);background:#fff}
main{max-width:1200px;margin:0 auto;padding:0 24px 48px}
a{color:var(--accent)}
h1{font-size:15px;font-weight:600;margin:0;color:var(--muted);letter-spacing:.02em}
h2{font-size:21px;margin:36px 0 10px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:22px 0 8px}
h4{font-size:14px;margin:14px 0 6px}
.verdict{padding:26px 24px 22px;border-bottom:1px solid var(--line)}
.verdict .inner{max-width:1200px;margin:0 auto}
.verdict.passed{background:var(--pass-bg)}
.verdict.failed{background:var(--fail-bg)}
.verdict.unknown{background:var(--warn-bg)}
.verdict .word{font-size:56px;font-weight:800;letter-spacing:.04em;line-height:1.05;margin:6px 0}
.verdict.passed .word{color:var(--pass)}
.verdict.failed .word{color:var(--fail)}
.verdict.unknown .word{color:var(--warn)}
.verdict .why{font-size:17px;margin:4px 0 0}
.verdict ul{margin:8px 0 0;padding-left:20px;font-size:15px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);z-index:5}
nav .inner{max-width:1200px;margin:0 auto;padding:8px 24px;display:flex;gap:18px;flex-wrap:wrap}
nav a{text-decoration:none;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:140px}
.card .v{font-size:26px;font-weight:700}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.card .d{font-size:12px;color:var(--muted)}
.chips{display:flex;gap:8px;flex-wrap:wrap;margin:8px 0}
.chip{border:1px solid var(--line);border-radius:14px;padding:2px 10px;font-size:12px;background:var(--card)}
.chip.ran{border-color:#9fd3b5}
.chip.skipped{border-color:#e3c77a;background:var(--warn-bg)}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:var(--card);font-weight:600;position:sticky;top:0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.failrow td{background:#fff6f5}
.badge{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:700}
.badge.pass{background:var(--pass-bg);color:var(--pass)}
.badge.fail{background:var(--fail);color:#fff}
.badge.skip,.badge.small{background:#eceef2;color:var(--muted)}
.skipped{background:var(--warn-bg);border:1px solid #e3c77a;border-radius:6px;padding:8px 12px}
.note{color:var(--muted);font-size:12.5px}
.up{color:var(--fail)}.down{color:var(--pass)}
.sentence{margin:2px 0}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
table.cm td{text-align:center;min-width:46px;padding:0}
table.cm td a,table.cm td span{display:block;padding:6px 4px;text-decoration:none;color:inherit}
table.cm th.rowh{text-align:right}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 12px}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:5px}
figure.flag{border-color:var(--fail)}
figure img{display:block;border-radius:3px;image-rendering:auto}
figcaption{font-size:11px;line-height:1.3;margin-top:4px;overflow-wrap:anywhere}
figcaption .sh{white-space:nowrap}
.cell{border-left:3px solid var(--line);padding-left:10px;margin:10px 0}
.cell:target{border-left-color:var(--accent);background:#f2f6ff}
.legend{display:inline-flex;gap:12px;font-size:12px;color:var(--muted);align-items:center}
.sw{display:inline-block;width:12px;height:12px;border:2px solid;vertical-align:-2px;margin-right:4px}
footer{color:var(--muted);font-size:12px;margin-top:40px;border-top:1px solid var(--line);padding-top:10px}
"""

"""The template set of the report and the Airflow reports page: one Jinja environment over `templates/`.

Every template is autoescaped (text, attributes, SVG <text> and <title> alike) and an undefined name is
an error, not an empty string; a missing value (None, NaN) prints as an em dash. Nothing from data is
marked safe: templates build all markup. The report carries a Content-Security-Policy that forbids
scripts and any network fetch, as a second line of defence.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2

from audit_tasks.report import format as fmt
from audit_tasks.report.data import is_missing

#: The report's own meta policy (the reports page serves reports with this plus `sandbox`).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _missing_as_dash(value: Any) -> Any:
    """Every `{{ value }}` passes here before escaping: None and NaN show as an em dash."""
    return fmt.MISSING if is_missing(value) else value


@functools.cache
def environment() -> jinja2.Environment:
    """The shared environment (built once; templates compile on first use)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("audit_tasks.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2", "svg"), default=True),
        undefined=jinja2.StrictUndefined,
        finalize=_missing_as_dash,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=fmt.num, count=fmt.count, pct=fmt.pct, coord=fmt.coord)
    return env


def render(template: str, **context: Any) -> str:
    """Render one template of the set (e.g. `report.html.j2`, `reports_index.html.j2`) to a string."""
    return environment().get_template(template).render(**context)

"""The one Jinja2 environment: every script, constraint file and report is rendered from
``templates/`` with ``StrictUndefined`` (a missing value is an error, never an empty string)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def count(value: int | None) -> str:
    """An integer with thousands separators; None (a figure a stopped run never measured) as 'n/a'."""
    return "n/a" if value is None else f"{value:,}"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["count"] = count  # the custom filters, registered here and nowhere else
    return env


def render(name: str, **context) -> str:
    """templates/<name> rendered with ``context``."""
    return environment().get_template(name).render(**context)

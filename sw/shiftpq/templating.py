"""The one Jinja2 environment: every script, constraint file and report is rendered from
``templates/`` with ``StrictUndefined`` (a missing value is an error, never an empty string)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                              autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(name: str, **context) -> str:
    """templates/<name> rendered with ``context``."""
    return environment().get_template(name).render(**context)

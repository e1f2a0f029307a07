"""The user docs keep up with the product: every `serve` option is in the configuration page."""

from __future__ import annotations

from pathlib import Path

import typer

from tokenfactory.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _serve_options() -> list[str]:
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    names = []
    for param in serve.params:
        names += [o for o in param.opts + param.secondary_opts if o.startswith("--")]
    return [n for n in names if n != "--help"]


def test_every_serve_option_is_documented() -> None:
    page = (DOCS / "configuration.md").read_text()
    options = _serve_options()
    assert "--model" in options and "--speculation" in options  # the listing itself works
    missing = [o for o in options if f"`{o}`" not in page]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"

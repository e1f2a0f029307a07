"""The user docs keep up with the product: every `serve` option is in the configuration page."""

from __future__ import annotations

import re
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


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_the_docs_resolve() -> None:
    pages = [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]
    anchors = {
        p.resolve(): {_anchor(h) for h in re.findall(r"^#+ (.+)$", p.read_text(), re.M)}
        for p in pages
    }
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page.resolve()
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors.get(dest, set()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert len(pages) > 10
    assert not broken, "\n".join(broken)

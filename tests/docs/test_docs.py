"""The README stays a front door whose links work, and the configuration page lists exactly the fields of Settings."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest

from app.config import Settings
from app.errors import STATUS_BY_ERROR

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CONFIGURATION_PAGE = DOCS / "configuration.md"
SETTINGS_HOOK = DOCS / "hooks" / "settings_table.py"
README_MAX_LINES = 150
# [text](target) and ![alt](target), ignoring an optional "title"; reference-style links are not used.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
API_PAGE = DOCS / "api.md"
# `| 503 | `model_not_ready` / `overloaded` | when |` rows of the API page's error table.
ERROR_ROW = re.compile(r"^\| ([\d /]+) \| ([^|]+) \|", re.MULTILINE)
TABLE_VARIABLE = re.compile(r"^\| `(ALEXNET_[A-Z0-9_]+)` \|", re.MULTILINE)


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", SETTINGS_HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links(path: Path) -> list[str]:
    return [target for target in MARKDOWN_LINK.findall(path.read_text()) if not urlsplit(target).scheme]


def test_readme_is_a_front_door() -> None:
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_every_relative_link_in_the_readme_resolves() -> None:
    links = relative_links(README)
    assert links, "the README links into the docs"
    broken = []
    for link in links:
        parts = urlsplit(link)
        target = (README.parent / unquote(parts.path)).resolve() if parts.path else README
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in _heading_anchors(target.read_text()):
            broken.append(f"{link}: no heading #{parts.fragment} in {target.name}")
    assert broken == []


def test_configuration_page_lists_exactly_the_fields_of_settings(hook: ModuleType) -> None:
    page = CONFIGURATION_PAGE.read_text()
    assert hook.MARKER in page, "the generated table's marker is missing from docs/configuration.md"
    rendered = hook.on_page_markdown(page)
    listed = TABLE_VARIABLE.findall(rendered)
    assert listed == [f"ALEXNET_{name.upper()}" for name in Settings.model_fields]


def test_every_setting_has_a_description_and_no_description_is_orphaned(hook: ModuleType) -> None:
    fields = set(Settings.model_fields)
    described = set(hook.MEANINGS) | {name for name, field in Settings.model_fields.items() if field.description}
    assert sorted(fields - described) == [], f"describe them in {SETTINGS_HOOK.relative_to(REPO_ROOT)}"
    assert sorted(set(hook.MEANINGS) - fields) == [], "these are no longer settings"
    computed = {name for name, field in Settings.model_fields.items() if field.default_factory is not None}
    assert sorted(computed - set(hook.COMPUTED_DEFAULTS)) == [], "say what these computed defaults are"


def test_generated_defaults_are_the_codes(hook: ModuleType) -> None:
    rendered = hook.settings_table()
    assert "| `ALEXNET_PORT` | int | `8000` |" in rendered
    assert "| `ALEXNET_PROVIDERS` | comma-separated list | `CUDAExecutionProvider,CPUExecutionProvider` |" in rendered
    assert "| `ALEXNET_API_KEY` | secret | unset |" in rendered
    assert str(Path.home()) not in rendered, "home directories are written as ~"


def test_every_docs_page_is_in_the_navigation() -> None:
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert [page for page in pages if f": {page}" not in nav] == []


def test_the_api_page_lists_every_error_code_with_its_status() -> None:
    documented: dict[str, set[int]] = {}
    for statuses, codes in ERROR_ROW.findall(API_PAGE.read_text()):
        for code in re.findall(r"`([a-z_]+)`", codes):
            documented.setdefault(code, set()).update(int(status) for status in re.findall(r"\d+", statuses))
    missing = {
        error.code: status for error, status in STATUS_BY_ERROR.items() if status not in documented.get(error.code, ())
    }
    assert missing == {}

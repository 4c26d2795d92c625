"""The docs' option tables are generated from the declarations and must match them."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("options_docs", ROOT / "scripts" / "options_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_option_table_in_the_docs_matches_the_declarations():
    gen = _generator()
    found = set()
    for path in sorted((ROOT / "docs").glob("*.md")):
        text = path.read_text()
        found.update(gen.kinds_in(text))
        assert gen.render(text) == text, f"{path.name}: option table differs; run python scripts/options_docs.py"
    from unlearnkit.options import OWNERS

    shipped = {kind for (kind, _), o in OWNERS.items() if o.config.__module__.startswith("unlearnkit.")}
    assert shipped <= found, "every kind of declared option has a table in docs/"


def test_a_changed_declaration_makes_the_check_fail(monkeypatch):
    gen = _generator()
    text = (ROOT / "docs" / "methods.md").read_text()
    from unlearnkit.options import Declared

    monkeypatch.setattr(Declared, "allowed", lambda self: "anything at all")
    assert gen.render(text) != text

"""Write (or, with --check, compare) the option tables in docs/ from the declarations (unlearnkit.options).

A doc asks for a table with a marker pair; everything between the markers is generated:

    <!-- options:method -->
    <!-- /options -->

KIND is method, train, model, spdgan or command (one table per owner of that kind). Run
`python scripts/options_docs.py` after changing an option; tests/test_docs_options.py fails while a table differs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
MARKED = re.compile(r"(<!-- options:(\w+) -->\n).*?(<!-- /options -->)", re.S)


def section(kind: str) -> str:
    import unlearnkit  # noqa: F401  (registers the library's owners)
    import unlearnkit.cli  # noqa: F401  (registers the sub-commands' flags)
    import unlearnkit.spdgan  # noqa: F401
    from unlearnkit.options import OWNERS, markdown_table

    # The package's own owners (tests may register more for a while).
    owners = [name for (k, name), o in OWNERS.items() if k == kind and o.config.__module__.startswith("unlearnkit.")]
    if not owners:
        raise SystemExit(f"no declared options of kind {kind!r}")
    parts = []
    for name in owners:
        title = f"`{name}`" if kind in ("method", "command") else name
        parts += [f"#### {title}", "", markdown_table(kind, name), ""]
    return "\n".join(parts)


def render(text: str) -> str:
    return MARKED.sub(lambda m: m.group(1) + "\n" + section(m.group(2)) + "\n" + m.group(3), text)


def kinds_in(text: str) -> list[str]:
    return [m.group(2) for m in MARKED.finditer(text)]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        old = path.read_text()
        new = render(old)
        if new != old:
            stale.append(path.name)
            if not check:
                path.write_text(new)
    if check and stale:
        print(f"option tables differ from the declarations in {', '.join(stale)}; run python scripts/options_docs.py")
        return 1
    print(("rewrote " if stale else "up to date: ") + (", ".join(stale) if stale else "every option table"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

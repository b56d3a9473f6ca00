"""The spec's action table (docs/record-spec.md §2) says what the code does: every
`EventAction` has its row, with its category, type, kind and criticality, and no row names
an action the code does not know."""

from __future__ import annotations

import re
from pathlib import Path

from audit.integrity.events import EventAction

SPEC = Path(__file__).parents[2] / "docs" / "record-spec.md"
_ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+) \| ([^|]+) \| (\w+) \| ([^|]+) \|$")


def table() -> dict[str, tuple[tuple[str, ...], tuple[str, ...], str, bool]]:
    text = SPEC.read_text(encoding="utf-8")
    start = text.index("| action | category | type | kind | critical |")
    rows: dict[str, tuple[tuple[str, ...], tuple[str, ...], str, bool]] = {}
    for line in text[start:].splitlines()[2:]:
        match = _ROW.match(line)
        if match is None:
            break
        name, category, kind_type, kind, critical = match.groups()
        rows[name] = (
            tuple(c.strip() for c in category.split(",")),
            tuple(t.strip() for t in kind_type.split(",")),
            kind,
            critical.strip().startswith("**yes**"),
        )
    return rows


def test_every_action_has_its_row_and_the_row_is_right() -> None:
    rows = table()
    assert set(rows) == {a.value for a in EventAction}
    for name, (category, types, kind, critical) in rows.items():
        info = EventAction(name).info
        assert (category, types, kind, critical) == (
            info.category,
            info.type,
            info.kind,
            info.critical,
        ), name

"""docs/plugins.md documents every hookspec in pandacead.hookspecs, truthfully."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from pandacead import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def _hookspecs() -> dict[str, dict]:
    specs = {}
    for name, obj in vars(hookspecs).items():
        opts = getattr(obj, "pandacead_spec", None)
        if callable(obj) and opts is not None:
            specs[name] = opts
    return specs


def _sections(text: str) -> dict[str, str]:
    """Heading text -> the text up to the next heading of the same or a higher level."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    heads = [(i, len(m.group(1)), m.group(2)) for i, line in enumerate(lines) if (m := re.match(r"^(#{1,6})\s+(.*)$", line))]
    for k, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1 :] if lv <= level), len(lines))
        out[title] = "\n".join(lines[i + 1 : end])
    return out


def _section_for(name: str, sections: dict[str, str]) -> str | None:
    for title, body in sections.items():
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", title):
            return body
    return None


def test_there_are_hookspecs():
    assert "pandacead_register_trainers" in _hookspecs()
    assert len(_hookspecs()) >= 5


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hookspec_is_documented_under_its_own_heading(name):
    sections = _sections(DOC.read_text("utf-8"))
    body = _section_for(name, sections)
    assert body is not None, f"hookspec {name} has no heading in {DOC.name}; document it"
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    for param in params:
        assert f"`{param}`" in body, f"{DOC.name}: the section on {name} does not describe its argument `{param}`"
    firstresult = bool(_hookspecs()[name].get("firstresult"))
    m = re.search(r"\*\*firstresult:\*\*\s*(yes|no)", body)
    assert m, f"{DOC.name}: the section on {name} does not say whether it is firstresult"
    assert (m.group(1) == "yes") == firstresult, f"{DOC.name}: {name} is documented as firstresult={m.group(1)}, the spec says {firstresult}"
    for item in ("**Returns:**", "**When:**"):
        assert item in body, f"{DOC.name}: the section on {name} lacks {item}"
    assert "**Exceptions:**" in body or "exception" in body.lower(), f"{DOC.name}: {name}: what does an exception mean?"


def test_docs_name_no_hook_that_does_not_exist():
    text = DOC.read_text("utf-8")
    documented = set(re.findall(r"^#+\s+`(pandacead_[a-z_]+)`", text, flags=re.M))
    assert documented <= set(_hookspecs()), f"documented but not in hookspecs: {sorted(documented - set(_hookspecs()))}"


def test_docs_cover_the_trainer_interface_and_packaging():
    text = DOC.read_text("utf-8")
    for needle in ("plan(job, ctx)", "train(job, plan, ctx, progress)", '"pandacead"', "allow", "deny", "dirs",
                   "pandacead plugins --json", "epoch", "epochs", "loss", "epsilon", "isolated", "pandacead_nss"):
        assert needle in text, f"{DOC.name} does not mention {needle!r}"

"""Prompt templates (docs/research.md "Prompt templates"): `{{name}}` placeholders and plain substitution. A template
is data, never code: rendering replaces each placeholder once with the value's text and re-reads nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmlab.runtime.text import visible_text

from .. import domain as lab
from .domain import Fields, invalid

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
OPENING = re.compile(r"\{\{")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_TEMPLATE_CHARS = 200_000
MAX_VARIABLES = 100


def placeholders(template: str) -> list[str]:
    """The placeholder names in order of first appearance."""
    return list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)))


def malformed(template: str) -> str | None:
    """The first `{{` that does not open a `{{name}}` placeholder, quoted, or None."""
    matched = {m.start() for m in PLACEHOLDER.finditer(template)}
    for m in OPENING.finditer(template):
        if m.start() not in matched and m.start() - 1 not in matched:
            return template[m.start():m.start() + 24]
    return None


@dataclass
class NewTemplate:
    name: str
    description: str
    template: str
    variables: list[str]
    default_values: dict[str, Any]
    tags: list[str]
    metadata: dict[str, Any]


def new_template(body: Mapping[str, Any]) -> NewTemplate:
    """Validate POST /prompts: the declared variables are exactly the template's placeholders (when declared)."""
    fields = Fields()
    name = body.get("name", "")
    with fields.check():
        name = lab.validate_name(name)
    description = body.get("description", "")
    with fields.check():
        description = lab.validate_description(description)
    template = body.get("template", "")
    found: list[str] = []
    if not isinstance(template, str) or not template.strip():
        fields.add("template", "is required")
    elif len(template) > MAX_TEMPLATE_CHARS:
        fields.add("template", f"must be at most {MAX_TEMPLATE_CHARS} characters")
    else:
        bad = malformed(template)
        if bad is not None:
            fields.add("template", f"{bad!r} is not a placeholder: write {{{{name}}}} with a name of letters, "
                                   "digits and underscores")
        found = placeholders(template)
    declared = list(body.get("variables") or [])
    for i, v in enumerate(declared):
        if not isinstance(v, str) or not NAME.match(v):
            fields.add(f"variables[{i}]", "must be a name of letters, digits and underscores")
    if len(declared) > MAX_VARIABLES:
        fields.add("variables", f"must hold at most {MAX_VARIABLES} names")
    if declared and not fields.problems:
        undeclared = [v for v in found if v not in declared]
        unused = [v for v in declared if v not in found]
        if undeclared:
            fields.add("variables", f"must declare every placeholder of the template; missing: {', '.join(undeclared)}")
        elif unused:
            fields.add("variables", f"declares variables the template does not use: {', '.join(unused)}")
    variables = list(dict.fromkeys(declared)) if declared else found
    defaults = dict(body.get("default_values") or {})
    for k in defaults:
        if k not in variables:
            fields.add(f"default_values.{k}", "is not a variable of the template")
    tags: list[str] = []
    with fields.check():
        tags = lab.validate_tags(list(body.get("tags") or []))
    with fields.check():
        visible_text("name", name, max_chars=lab.MAX_NAME_CHARS)
    fields.raise_if_any()
    return NewTemplate(name, description, template, variables, defaults, tags, dict(body.get("metadata") or {}))


def text_of(value: Any) -> str:
    """A variable's text: strings as they are, any other JSON value as its JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False)


def missing(template: str, variables: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    return [v for v in placeholders(template) if v not in variables and v not in defaults]


def render(template: str, variables: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """Substitute every placeholder (the variable, else its default). 400 naming each missing variable."""
    absent = missing(template, variables, defaults)
    if absent:
        raise invalid({f"variables.{v}": "is required by the template (no value and no default)" for v in absent},
                      f"Missing template variable{'s' if len(absent) > 1 else ''}: {', '.join(absent)}")

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        return text_of(variables[name] if name in variables else defaults[name])

    return PLACEHOLDER.sub(sub, template)

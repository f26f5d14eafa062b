"""A small YAML writer for the Envoy config: block style, plain scalars where YAML reads them back unchanged.

Written by hand because the config is only dicts, lists, strings, numbers and booleans, and PyYAML is a dev-only
dependency: the gateway image renders its config with the runtime dependencies alone.
"""

from __future__ import annotations

import json
import re

_PLAIN = re.compile(r"^[A-Za-z_./][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _YAML_WORDS:
        return s
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def yaml_lines(v: object, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(v, dict):
        for k, item in v.items():
            key = _scalar(k)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(yaml_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_scalar(item) if not isinstance(item, dict | list) else json.dumps(item)}")
    else:
        for item in v:  # type: ignore[union-attr]
            if isinstance(item, dict | list) and item:
                sub = yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_scalar(item) if not isinstance(item, dict | list) else json.dumps(item)}")
    return lines

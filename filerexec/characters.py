"""Which characters a job file's values may hold once YAML has read its escapes.

The raw text is checked for invisible characters before YAML reads it (spec.py), but a
double-quoted value can write any character as an escape: ``"echo a\\0b"`` is a NUL,
``"\\x1b[31m"`` a terminal escape, ``"\\u202e"`` a right-to-left override. So the values
are checked again, as they will run:

- NUL in any value: no program can receive it (``exec`` ends the string there).
- In what runs (``commands``, ``cwd``, ``shell``, ``env``): C0 and C1 control characters
  other than tab and newline, Unicode bidirectional controls and invisible format
  characters. They can make the text a person reviews (or signs) on a phone differ from
  what runs ("Trojan Source"), or a terminal showing the log act on them.

Pure: YAML nodes in, the first offending node with what to say out.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["RUNS", "problem"]

RUNS = frozenset({"commands", "cwd", "shell", "env"})  # the keys whose values are run
_NUL = re.compile("\0")
# C0 but tab and newline, DEL, C1; bidi embeddings, overrides and isolates, zero-width
# characters and marks, the word joiner and invisible operators, and U+FEFF inside text.
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u2069\ufeff]")


def _scalars(node: Node) -> Iterator[ScalarNode]:
    if isinstance(node, ScalarNode):
        yield node
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _scalars(item)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield from _scalars(key)
            yield from _scalars(value)


def _named(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" {name}" if name else " (a control character)")


def problem(key: str, node: Node) -> tuple[ScalarNode, str, str] | None:
    """The first value under ``key`` holding a character it may not hold: the node, what is
    wrong, and the hint; None if every value is fine."""
    pattern = _HIDDEN if key in RUNS else _NUL
    for scalar in _scalars(node):
        found = pattern.search(scalar.value)
        if found is None:
            continue
        char = found[0]
        if char == "\0":
            return (scalar, f"`{key}` holds a NUL character (U+0000)",
                    "remove the \\0 escape: no program can be given a NUL")
        return (scalar, f"`{key}` holds the invisible character {_named(char)}",
                "remove it (or its escape): it can make what you read differ from what runs")
    return None

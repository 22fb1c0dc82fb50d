"""A griffe extension for the API reference: mechprobe's ``Example:`` sections are examples.

mechprobe's docstrings head their doctests ``Example:`` (Google style, which pytest runs); griffe
reads only ``Examples:`` as an examples section and would render ``Example:`` as an admonition of
Markdown, turning ``>>>`` lines into quotes. This renames the heading before griffe parses it.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(Extension):
    """Read ``Example:`` as ``Examples:`` in every docstring."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        """Rename the heading in ``obj``'s docstring (before it is parsed, on first render)."""
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)

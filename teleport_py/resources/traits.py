"""Trait templates: ``{{internal.kubernetes_groups}}``, ``{{external["groups"]}}``.

Roles are shared by many users; templates let one role hand each user the
Kubernetes groups and users recorded in that user's own traits. A value holds
at most one template, optionally between a literal prefix and suffix
(``dev-{{external.team}}``). Anything else between braces is refused when the
role is loaded, so a typo can never silently widen or narrow access later.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import attrs

NAMESPACES = ("internal", "external")

_TEMPLATE = re.compile(r"(?P<prefix>[^{}]*)\{\{(?P<expression>[^{}]*)\}\}(?P<suffix>[^{}]*)")
_EXPRESSION = re.compile(
    r"\s*(?P<namespace>[A-Za-z_]\w*)"
    r"(?:\.(?P<dotted>[A-Za-z_][\w-]*)|\[\s*\"(?P<quoted>[^\"]+)\"\s*\])\s*"
)


@attrs.frozen
class Template:
    """A parsed template: the trait it reads and the literal text around it.

    ``internal`` and ``external`` read the same per-user trait map: Teleport
    keeps the distinction for where the trait came from, not for lookup.
    """

    namespace: str
    trait: str
    prefix: str = ""
    suffix: str = ""

    def expand(self, traits: Mapping[str, Sequence[str]]) -> list[str]:
        return [f"{self.prefix}{value}{self.suffix}" for value in traits.get(self.trait, ()) if value]


def parse_template(text: str) -> Template | None:
    """Parse ``text``; ``None`` for a plain literal, ``ValueError`` for a malformed template."""
    if "{{" not in text and "}}" not in text:
        return None
    match = _TEMPLATE.fullmatch(text)
    if match is None:
        raise ValueError(f"malformed template {text!r}: expected one '{{{{namespace.trait}}}}' with no other braces")
    expression = _EXPRESSION.fullmatch(match["expression"])
    if expression is None:
        raise ValueError(
            f"malformed template {text!r}: expected '{{{{internal.name}}}}' or '{{{{external.name}}}}'"
        )
    if expression["namespace"] not in NAMESPACES:
        raise ValueError(
            f"unknown trait namespace {expression['namespace']!r} in {text!r} (valid: {', '.join(NAMESPACES)})"
        )
    return Template(
        namespace=expression["namespace"],
        trait=expression["dotted"] or expression["quoted"],
        prefix=match["prefix"],
        suffix=match["suffix"],
    )


def expand(values: Iterable[str], traits: Mapping[str, Sequence[str]]) -> list[str]:
    """Expand every template in ``values`` against one user's ``traits``.

    Literals pass through; a template yields one value per trait value and
    nothing when the user lacks the trait. Order is kept and duplicates are
    dropped, since callers turn the result into impersonation headers.
    Raises ``ValueError`` on a malformed template.
    """
    expanded: dict[str, None] = {}
    for value in values:
        template = parse_template(value)
        for result in [value] if template is None else template.expand(traits):
            expanded[result] = None
    return list(expanded)

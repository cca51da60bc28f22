"""Pattern matching for role fields, with Teleport's rules.

A pattern is one of:

- ``*``: anything, including the empty string;
- ``^...$``: a regular expression (anchored by its own ``^`` and ``$``);
- a glob where only ``*`` is special (``dev-*``);
- otherwise a literal.

Regular expressions are searched, not full-matched, exactly like Go's
``regexp.MatchString`` does in Teleport: ``^dev|prod$`` is the alternation of
``^dev`` and ``prod$``. Loosening or tightening that here would change what a
deny rule catches.
"""
from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

WILDCARD = "*"


class InvalidPattern(ValueError):
    """A ``^...$`` pattern is not a valid regular expression.

    Callers deciding access must treat this as a denial: a broken deny rule
    must never be read as "matches nothing".
    """


def _is_regex(pattern: str) -> bool:
    return len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$")


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    if _is_regex(pattern):
        try:
            return re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as error:
            raise InvalidPattern(f"invalid regular expression {pattern!r}: {error}") from None
    return re.compile(".*".join(re.escape(part) for part in pattern.split(WILDCARD)))


def match_value(pattern: str, value: str) -> bool:
    """Whether ``value`` matches one role ``pattern``; raises ``InvalidPattern``."""
    if pattern == WILDCARD:
        return True
    compiled = _compile(pattern)
    if _is_regex(pattern):
        return compiled.search(value) is not None
    return compiled.fullmatch(value) is not None


def match_any(patterns: Sequence[str], value: str) -> bool:
    return any(match_value(pattern, value) for pattern in patterns)


def match_labels(
    selector: Mapping[str, Sequence[str]], labels: Mapping[str, str]
) -> tuple[bool, str]:
    """Match a ``kubernetes_labels`` selector against a cluster's labels.

    An empty selector matches nothing (a role must opt in to clusters);
    ``'*': ['*']`` matches every cluster, even one without labels. Otherwise
    every selector key must be present and one of its patterns must match the
    value; the key ``*`` is satisfied by any label whose value matches.
    Returns ``(matched, why-not)`` so denials can be explained in the audit log.
    """
    if not selector:
        return False, "empty label selector"
    if list(selector.get(WILDCARD, ())) == [WILDCARD]:
        return True, ""
    for key, patterns in selector.items():
        if key == WILDCARD:
            if not any(match_any(patterns, value) for value in labels.values()):
                return False, f"no label value matches {list(patterns)!r}"
            continue
        if key not in labels:
            return False, f"missing label {key!r}"
        if WILDCARD not in patterns and not match_any(patterns, labels[key]):
            return False, f"label {key}={labels[key]!r} does not match {list(patterns)!r}"
    return True, ""

"""What the resource services share: backend values as JSON, a resource
document validated into its value object, and the clock as a UTC datetime."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives import serialization

from teleport_py.auth.errors import BadParameter
from teleport_py.pki import HostIdentity, UserIdentity
from teleport_py.resources import ValidationError, resource_from_dict

#: Who is calling: a user or a cluster service, from a verified certificate.
Identity = UserIdentity | HostIdentity


def utc_now(clock) -> datetime:
    return datetime.fromtimestamp(clock.seconds(), timezone.utc)


def to_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode("utf-8")


def validated(doc: Any, expected_kind: str | None = None):
    """A resource document as its value object, or BadParameter naming the field."""
    if not isinstance(doc, dict):
        raise BadParameter("resource must be a mapping")
    try:
        resource = resource_from_dict(doc)
    except ValidationError as e:
        raise BadParameter(str(e), field=e.path) from None
    if expected_kind and doc.get("kind") != expected_kind:
        raise BadParameter(f"kind: expected {expected_kind}")
    return resource


def load_public_key(pem: str):
    try:
        return serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeError):
        raise BadParameter("public_key: not a PEM-encoded public key") from None

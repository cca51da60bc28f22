"""Error bodies in the shape kubectl understands.

kubectl prints ``message`` from a ``metav1.Status`` body, so a refusal written
this way reads like one from the API server itself.
"""
from __future__ import annotations

import json


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> bytes:
    """A ``Status`` object with ``status: Failure`` as UTF-8 JSON."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return json.dumps(status).encode("utf-8")

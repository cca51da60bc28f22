"""A stream's ``kube.request`` audit events, encoded from a template.

The agent audits every request, and building the event as a dict and
encoding it whole was ~5 % of its CPU per small GET. The fields a tunnel
stream fixes (the verified user, the clusters, where kubectl connects from,
the certificate's access requests and allowed resources) are encoded once
per stream here; each event encodes only its own fields and joins the parts.

The line is byte for byte what ``json.dumps(events.make_event(...),
separators=(",", ":"))`` writes for the same fields in the same order
(``StreamContext.audit``'s order), ``None`` fields left out; tests compare
the two for hypothesis-drawn inputs (tests/test_kube_request_event.py).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

from teleport_py import events

#: What ``json.dumps(value, separators=(",", ":"))`` writes, without building an encoder per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode

_HEADS = {
    success: '{"event":%s,"code":%s,"time":"' % (
        _encode(events.KUBE_REQUEST), _encode(events.CODES[(events.KUBE_REQUEST, success)]))
    for success in (True, False)
}


def _members(fields: dict[str, Any]) -> str:
    """``,"name":value...`` for the fields that are not ``None`` (as the
    members of a JSON object, after a comma), or ``""`` if none are."""
    text = _encode({k: v for k, v in fields.items() if v is not None})[1:-1]
    return "," + text if text else ""


class KubeRequestEvents:
    """Encodes one stream's ``kube.request`` events as spool lines."""

    def __init__(self, *, user: str, cluster_name: str | None, kube_cluster: str, addr_remote: str,
                 access_requests: Sequence[str], allowed_resources: Sequence[object]) -> None:
        self._before = _members({"user": user, "cluster_name": cluster_name, "kube_cluster": kube_cluster})
        self._after = _members({
            "addr_remote": addr_remote,
            "access_requests": list(access_requests) or None,
            "allowed_resources": [str(r) for r in allowed_resources] or None,
        })

    def line(self, now: float, method: str, path: str, info, code: int, *,
             kubernetes_users: list[str], kubernetes_groups: list[str], reason: str | None = None) -> bytes:
        """The event's JSON line (newline ended); ``now`` is reactor time."""
        middle = _members({
            "http_method": method,
            "verb": getattr(info, "verb", None),
            "request_path": path,
            "response_code": code,
            "resource_api_group": getattr(info, "api_group", None),
            "resource_kind": getattr(info, "resource", None),
            "resource_namespace": getattr(info, "namespace", None),
            "resource_name": getattr(info, "name", None),
            "resource_subresource": getattr(info, "subresource", None),
            "kubernetes_users": kubernetes_users,
            "kubernetes_groups": kubernetes_groups,
        })
        success = reason is None
        ending = "}\n" if success else ',"reason":' + _encode(reason) + "}\n"
        return "".join((
            _HEADS[success], events.rfc3339(now), '","uid":"', str(uuid.uuid4()),
            '","success":true' if success else '","success":false',
            self._before, middle, self._after, ending,
        )).encode("ascii")

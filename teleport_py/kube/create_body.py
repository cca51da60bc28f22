"""What a ``create`` request's body says about the new object (sans-IO).

A create names its object in the body (``POST .../configmaps`` carries
``metadata.name``), so rules restricting names can only be applied after
reading it. kubectl sends JSON for ``apply``/``create -f`` and Kubernetes'
protobuf encoding for ``create configmap|secret|namespace|deployment``;
both are read here, exactly as the API server will read them, into one
``ObjectMeta``. Any other body, or one that cannot be read, is a
``CreateBodyError``: the agent refuses the request rather than guess a name
(guessing ``""`` would slip past deny rules on names).
"""
from __future__ import annotations

import json

from teleport_py.kube import protobuf_meta
from teleport_py.kube.protobuf_meta import ObjectMeta, ProtobufError

JSON_CONTENT_TYPE = "application/json"


class CreateBodyError(Exception):
    """``message`` is for kubectl (a person reads it); ``reason`` for the audit log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def media_type(content_type: bytes) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return content_type.split(b";", 1)[0].strip().lower().decode("latin-1")


def object_meta(content_type: bytes, body: bytes, path_namespace: str) -> ObjectMeta:
    """The new object's name, generateName and namespace. ``path_namespace``
    is the namespace the request's path names (``""`` for none): a body
    naming another is refused, as the API server refuses it."""
    kind = media_type(content_type)
    if kind == JSON_CONTENT_TYPE:
        meta = _from_json(body)
    elif kind == protobuf_meta.CONTENT_TYPE:
        try:
            meta = protobuf_meta.read_object_meta(body)
        except ProtobufError as e:
            raise CreateBodyError(f"teleport could not read the object's metadata from the protobuf body: {e}",
                                  "malformed create body") from None
    else:
        raise CreateBodyError(
            f"teleport can only authorize create requests with a JSON or protobuf body, not {kind or 'none'!r}",
            f"create body of type {content_type.decode('latin-1')!r}")
    if path_namespace and meta.namespace and meta.namespace != path_namespace:
        raise CreateBodyError(
            f"the namespace of the object ({meta.namespace!r}) does not match the namespace of the request "
            f"({path_namespace!r})", "create body namespace differs from the path")
    return meta


def _from_json(body: bytes) -> ObjectMeta:
    """As Go's encoding/json fills ObjectMeta: UTF-8 only, the last of
    duplicate keys wins, ``null`` is the zero value."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise CreateBodyError("teleport could not read the object's name: malformed JSON body",
                              "malformed create body") from None
    metadata = obj.get("metadata") if isinstance(obj, dict) else []
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise CreateBodyError("teleport could not read the object's name from the body", "malformed create body")
    fields = {key: "" if metadata.get(json_key) is None else metadata[json_key]
              for key, json_key in (("name", "name"), ("generate_name", "generateName"), ("namespace", "namespace"))}
    if not all(isinstance(value, str) for value in fields.values()):
        raise CreateBodyError("teleport could not read the object's name from the body", "malformed create body")
    return ObjectMeta(**fields)

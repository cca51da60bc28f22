"""Errors the Auth API reports, each with the HTTP status it maps to.

Messages are for people (tctl prints them as they are); they never carry
secrets, and authentication failures are deliberately vague.
"""


class AuthError(Exception):
    status = 500
    kind = "internal"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        body = {"kind": self.kind, "message": self.message}
        body.update(self.details)
        return {"error": body}


class BadParameter(AuthError):
    status = 400
    kind = "bad_parameter"


class AccessDenied(AuthError):
    status = 403
    kind = "access_denied"


class NotFound(AuthError):
    status = 404
    kind = "not_found"


class AlreadyExists(AuthError):
    status = 409
    kind = "already_exists"


class LimitExceeded(AuthError):
    status = 429
    kind = "limit_exceeded"


ERRORS_BY_KIND = {cls.kind: cls for cls in (BadParameter, AccessDenied, NotFound, AlreadyExists, LimitExceeded, AuthError)}


def error_from_json(status: int, body: dict) -> AuthError:
    """Rebuild the server's error on the client side (tctl, agents)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return AuthError(f"auth server answered HTTP {status}")
    cls = ERRORS_BY_KIND.get(err.get("kind"), AuthError)
    details = {k: v for k, v in err.items() if k not in ("kind", "message")}
    return cls(str(err.get("message", "")), **details)


class StorageUnavailable(AuthError):
    """The backend cannot answer now (etcd without a reachable member or
    leader): the caller may try again in a moment."""

    status = 503
    kind = "unavailable"

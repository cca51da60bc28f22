"""The ``lock`` resource: while it is in force, its target (a user, or
every holder of a role) cannot log in, reissue certificates or request
access, and the agents end the target's kube connections, showing
``message``. ``expires`` (optional) ends it on its own."""
from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen
class Lock:
    name: str
    #: Exactly one of ``user`` and ``role`` is set.
    user: str = ""
    role: str = ""
    message: str = ""
    created_by: str = ""
    created: datetime | None = None
    expires: datetime | None = None

    def targets(self, username: str, roles) -> bool:
        return (bool(self.user) and self.user == username) or (bool(self.role) and self.role in roles)

    def describe(self) -> str:
        """What kubectl and tsh are told, as Teleport words it."""
        target = f'user "{self.user}"' if self.user else f'role "{self.role}"'
        return f"lock targeting {target} is in force" + (f": {self.message}" if self.message else "")

"""Roles for access request flows: ``requester`` may request ``kube-access``,
``reviewer`` may review requests for it."""


def requester_role(max_duration: str = "1h") -> str:
    return f"""\
kind: role
version: v7
metadata: {{name: requester}}
spec:
  allow:
    request:
      roles: [kube-access]
      max_duration: {max_duration}
"""


REVIEWER_ROLE = """\
kind: role
version: v7
metadata: {name: reviewer}
spec:
  allow:
    review_requests:
      roles: [kube-access]
"""

"""Audit event times: the fast RFC 3339 formatting is exactly datetime's."""
from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.events import rfc3339


def datetime_rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RFC3339Tests(SynchronousTestCase):
    @settings(max_examples=5000, deadline=None)
    @given(st.one_of(
        st.floats(0, 4e9),
        st.integers(0, 4 * 10**9).map(lambda i: i + 0.9999995),  # rounds up into the next second
        st.integers(0, 4 * 10**15).map(lambda i: i / 1e6),
        st.integers(0, 4 * 10**16).map(lambda i: i / 1e7),  # half a microsecond: rounds half to even
    ))
    def test_as_datetime_formats_it(self, seconds):
        self.assertEqual(rfc3339(seconds), datetime_rfc3339(seconds))

    def test_examples(self):
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00.000000Z")
        self.assertEqual(rfc3339(1764979200.9999996), "2025-12-06T00:00:01.000000Z")
        self.assertEqual(rfc3339(1764979200.25), "2025-12-06T00:00:00.250000Z")

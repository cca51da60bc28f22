"""Retry delays: doubling to a cap, shortened at random by up to a quarter."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.backoff import backoff_delay


class BackoffTests(SynchronousTestCase):
    @given(st.integers(min_value=0, max_value=50), st.floats(min_value=0, max_value=1))
    def test_delay_within_bounds(self, attempt, r):
        base = [1, 2, 4, 8][min(attempt, 3)]
        self.assertTrue(0.75 * base <= backoff_delay(attempt, lambda: r) <= base)

    def test_schedule_without_jitter(self):
        self.assertEqual([backoff_delay(a, lambda: 0.0) for a in range(6)], [1, 2, 4, 8, 8, 8])

    def test_first_delay_and_cap(self):
        self.assertEqual([backoff_delay(a, lambda: 0.0, first=5.0, cap=60.0) for a in range(6)],
                         [5, 10, 20, 40, 60, 60])

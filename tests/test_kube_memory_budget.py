"""kube.memory_budget: one agent-wide budget, claimed and released per request."""
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.kube.memory_budget import MemoryBudget, OverBudget, TooLarge


class MemoryBudgetTests(SynchronousTestCase):
    def setUp(self):
        self.budget = MemoryBudget(100)

    def test_claims_share_the_budget_and_give_it_back(self):
        a, b = self.budget.claim(), self.budget.claim()
        a.take(60)
        b.take(40)
        self.assertEqual(self.budget.used, 100)
        self.assertRaises(OverBudget, b.take, 1)
        self.assertEqual((self.budget.used, b.held), (100, 40))  # a refused take holds nothing more
        a.release()
        b.take(50)
        self.assertEqual(self.budget.used, 90)
        b.release()
        b.release()  # released twice: still nothing held
        self.assertEqual(self.budget.used, 0)

    def test_a_claim_larger_than_the_whole_budget_is_too_large_not_over_budget(self):
        claim = self.budget.claim()
        claim.take(90)
        with self.assertRaises(TooLarge) as cm:
            claim.take(11)
        self.assertIn("buffer memory limit", str(cm.exception))
        other = self.budget.claim()
        with self.assertRaises(OverBudget) as cm:
            other.take(11)
        self.assertIn("in use", str(cm.exception))

    def test_a_limit_must_be_positive(self):
        self.assertRaises(ValueError, MemoryBudget, 0)

"""Tests for role pattern and label matching."""
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from teleport_py.rbac.match import InvalidPattern, match_labels, match_value


class MatchValueTests(SynchronousTestCase):
    def test_table(self) -> None:
        cases = [
            ("*", "", True),
            ("*", "anything", True),
            ("dev", "dev", True),
            ("dev", "dev2", False),
            ("dev", "Dev", False),
            ("dev-*", "dev-1", True),
            ("dev-*", "dev-", True),
            ("dev-*", "prod-1", False),
            ("*-prod", "eu-prod", True),
            ("*-prod", "eu-prod-2", False),
            ("a.b", "axb", False),  # glob dots are literal
            ("a+b", "a+b", True),
            ("^dev-[0-9]+$", "dev-12", True),
            ("^dev-[0-9]+$", "dev-x", False),
            ("^dev-[0-9]+$", "xdev-1", False),
            ("^.+$", "", False),
            ("^.*$", "", True),
            ("^dev|prod$", "dev-1", True),  # Go semantics: alternation of ^dev and prod$
            ("", "", True),
            ("", "x", False),
        ]
        for pattern, value, expected in cases:
            self.assertEqual(match_value(pattern, value), expected, (pattern, value))

    def test_invalid_regex_raises(self) -> None:
        self.assertRaises(InvalidPattern, match_value, "^(unclosed$", "x")

    @given(st.text(), st.text())
    def test_never_crashes(self, pattern: str, value: str) -> None:
        try:
            result = match_value(pattern, value)
        except InvalidPattern:
            return
        self.assertIsInstance(result, bool)

    @given(st.text(alphabet=st.characters(blacklist_characters="*^")))
    def test_literal_matches_only_itself(self, literal: str) -> None:
        self.assertTrue(match_value(literal, literal))
        self.assertFalse(match_value(literal, literal + "x"))


class MatchLabelsTests(SynchronousTestCase):
    def test_table(self) -> None:
        cases = [
            ({}, {"env": "dev"}, False),
            ({"*": ["*"]}, {}, True),
            ({"*": ["*"]}, {"env": "prod"}, True),
            ({"env": ["dev"]}, {"env": "dev"}, True),
            ({"env": ["dev"]}, {"env": "prod"}, False),
            ({"env": ["dev"]}, {}, False),
            ({"env": ["*"]}, {"env": "x"}, True),
            ({"env": ["*"]}, {}, False),
            ({"env": ["dev", "staging"]}, {"env": "staging"}, True),
            ({"env": ["dev-*"]}, {"env": "dev-eu"}, True),
            ({"env": ["^(dev|qa)$"]}, {"env": "qa"}, True),
            ({"env": ["^(dev|qa)$"]}, {"env": "prod"}, False),
            ({"env": ["dev"], "team": ["a"]}, {"env": "dev"}, False),
            ({"env": ["dev"], "team": ["a"]}, {"env": "dev", "team": "a"}, True),
            ({"*": ["prod"]}, {"tier": "prod"}, True),
            ({"*": ["prod"]}, {"tier": "dev"}, False),
            ({"*": ["prod"]}, {}, False),
        ]
        for selector, labels, expected in cases:
            matched, why = match_labels(selector, labels)
            self.assertEqual(matched, expected, (selector, labels))
            self.assertEqual(bool(why), not expected, (selector, labels, why))

    def test_reason_names_the_label(self) -> None:
        self.assertIn("env", match_labels({"env": ["dev"]}, {"env": "prod"})[1])

"""Helm's own engine for the chart tests: helm-python-sdk's libhelm_c, a C
ABI over Helm v4's Go SDK (the same chart loader, template engine, linter
and release actions the ``helm`` CLI runs), called through ctypes. See
docs/dependencies.md. Its calls block, so they run on a worker thread.
"""
from __future__ import annotations

import os
import unittest

from twisted.internet.threads import deferToThread

from tests.support.procs import running_under_ci

CHART = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "helm", "teleport-kube-agent")


def helm_engine():
    """The ``helm_python`` module, or stop the test: skipped on a developer
    machine without it, failed under CI=true (scripts/test installs it)."""
    try:
        import helm_python
    except ImportError as e:
        message = f"helm-python-sdk (Helm's engine) is not installed: {e}; pip install helm-python-sdk"
        if running_under_ci():
            raise AssertionError(message) from None
        raise unittest.SkipTest(message) from None
    return helm_python


def render(values: dict, name: str = "teleport-agent", namespace: str = "teleport-agent") -> dict[str, str]:
    """The chart's manifests as Helm renders them: ``{template path: text}``."""
    helm = helm_engine()
    with helm.Chart.load(os.path.abspath(CHART)) as chart:
        return chart.render(values, name=name, namespace=namespace)


def manifests_text(rendered: dict[str, str]) -> str:
    """The rendered Kubernetes objects as one multi-document YAML (NOTES left out)."""
    return "\n---\n".join(text for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml")))


def in_thread(f, *args, **kwargs):
    return deferToThread(f, *args, **kwargs)

"""Helpers for tests that run real processes: servers, kubectl, a real Kubernetes control plane."""

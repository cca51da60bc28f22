"""What tests share: helpers for tests that run real processes (servers,
kubectl, a real Kubernetes control plane) and the fixtures unit tests have in
common (docs/kube-test-env.md lists them). No test module imports another."""

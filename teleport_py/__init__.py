"""teleport_py: a Kubernetes access plane on Twisted."""

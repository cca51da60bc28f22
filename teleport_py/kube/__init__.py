"""The Kubernetes service agent: joins, keeps a reverse tunnel, authorizes, impersonates and audits kubectl requests."""

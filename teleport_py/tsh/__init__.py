"""tsh, the user's client: login, status, logout, signup, kube ls/login/credentials, proxy kube (docs/tsh.md)."""

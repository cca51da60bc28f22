"""The Proxy service: one public TLS port for tsh, kubectl and agents' reverse tunnels."""

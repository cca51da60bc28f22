"""ALPN protocol names, as the TLS handshakes of the proxy, agent and tsh speak them."""

#: An agent's reverse tunnel to the proxy.
TUNNEL_ALPN = b"teleport-reversetunnel"
HTTP11_ALPN = b"http/1.1"
H2_ALPN = b"h2"

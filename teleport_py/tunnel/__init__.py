"""
Reverse-tunnel protocol: many streams over the one connection an agent dials
out to the proxy. Wire format and state machine: docs/tunnel.md.
"""

from teleport_py.tunnel.frames import TunnelProtocolError
from teleport_py.tunnel.mux import Multiplexer, StreamRejected, TunnelClosed
from teleport_py.tunnel.protocol import StreamAddress, TunnelProtocol
from teleport_py.tunnel.splice import Splice, SpliceEnd

__all__ = [
    "Multiplexer",
    "Splice",
    "StreamAddress",
    "StreamRejected",
    "TunnelClosed",
    "TunnelProtocol",
    "TunnelProtocolError",
    "SpliceEnd",
]

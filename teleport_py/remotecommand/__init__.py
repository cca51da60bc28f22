"""
Passive observers of kube exec/attach/cp/port-forward sessions (SPDY and
WebSocket), for session recording. See docs/streaming-protocols.md.
"""

from teleport_py.remotecommand.observer import (
    CLIENT,
    SERVER,
    Event,
    Exit,
    PortForwardClosed,
    PortForwardData,
    PortForwardError,
    PortForwardOpened,
    Resize,
    SessionObserver,
    Stderr,
    Stdin,
    Stdout,
    StreamClosed,
)
from teleport_py.remotecommand.status import (
    ExitStatus,
    RemoteCommandError,
    parse_error_text,
    parse_status,
)

__all__ = [
    "CLIENT", "SERVER", "Event", "Exit", "ExitStatus", "PortForwardClosed",
    "PortForwardData", "PortForwardError", "PortForwardOpened",
    "RemoteCommandError", "Resize", "SessionObserver", "Stderr", "Stdin",
    "Stdout", "StreamClosed", "parse_error_text", "parse_status",
]

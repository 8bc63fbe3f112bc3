"""The transport seam: a Transport opens a Stream to a board's agent; every board kind is one.

A :class:`Stream` (defined in device_agent, whose zipapp ships alone to boards) is the byte
stream the wire protocol runs over. A :class:`Transport` is how one board is reached: ``open()``
starts (or connects to) its agent and returns the stream, and ``bytes_per_second`` tells the
session how to pace a slow line. The implementations:

    sdk/transport/local.py     LocalTransport    the agent as a subprocess of this machine
    sdk/transport/serial.py    SerialTransport   a pyserial URL (tty, socket://, rfc2217://)
    sdk/transport/ssh.py       SSHTransport      connect, place the agent zipapp, run it on an exec channel
    sdk/transport/memory.py    MemoryTransport   the agent in a thread of this process (tests, notebooks)
    sdk/emulate/services.py    EmulatedTransport emu-serial / emu-pi, started on demand

``sdk.boards.transport_for(board)`` picks one for a Board; ``sdk.boards.open_session`` takes
a Board or any Transport.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from edgeship.device_agent.streams import Stream

__all__ = ["Stream", "Transport"]


@runtime_checkable
class Transport(Protocol):
    """How one board is reached: a name for messages, the line rate, and ``open()`` for a fresh stream.

    ``bytes_per_second`` is the line rate of a slow link (a serial line's baud / 10), or None
    for a fast one (a pipe, SSH); the session sizes its chunks and resend timeout from it. It is
    read after ``open()``: a transport may learn it only when it connects. Every ``open()`` is a
    new connection to the agent; the caller closes the stream. Errors are sdk.errors exceptions
    (LinkError, HostKeyError, AuthError, UsageError), never a third-party one.
    """

    name: str
    bytes_per_second: Optional[float]

    def open(self) -> Stream: ...

"""Byte streams the agent serves on: stdio (SSH exec channel, local subprocess) and a tty (serial line).

Standard library only: a board needs no pyserial to serve on /dev/ttyUSB0 or a pty.
Every stream is a :class:`Stream`: read(max_bytes, timeout) -> bytes (b"" on timeout), write(data),
close(); a write that the peer does not take within its write timeout raises StreamClosed (the
session ends). The host's transports (sdk/transport/) give streams of the same shape.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time
import tty
from typing import Optional, Protocol, runtime_checkable

BAUD_RATES = {n: getattr(termios, f"B{n}") for n in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
              if hasattr(termios, f"B{n}")}


@runtime_checkable
class Stream(Protocol):
    """The byte stream the wire protocol (protocol.Link) runs over, on either side of a link.

    ``read`` waits up to ``timeout`` seconds (None: as long as it takes) for the first byte and
    returns what is there, at most ``max_bytes``; ``b""`` means nothing came in time. Once the
    other end is gone, ``read`` and ``write`` raise: StreamClosed on the agent's side, the host's
    ``LinkError`` (sdk/errors.py) on the host's.
    """

    def read(self, max_bytes: int, timeout: Optional[float]) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class StreamClosed(Exception):
    """The other end went away (EOF on a pipe, a hung-up tty)."""


class FdStream:
    """A pair of file descriptors; writes give up (StreamClosed) when the peer accepts nothing for ``write_timeout`` s.

    A peer that stops reading fills the pipe or the tty's buffer; without the timeout the
    agent would block in its write for good. The write descriptor is made non-blocking so a
    write never waits longer than the timeout, whatever the size of the data.
    """

    def __init__(self, read_fd: int, write_fd: int, write_timeout: Optional[float] = 60.0) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.write_timeout = write_timeout
        os.set_blocking(write_fd, False)

    def read(self, max_bytes: int, timeout: Optional[float]) -> bytes:
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.read_fd, max_bytes)
        except BlockingIOError:
            return b""  # the shared non-blocking tty had nothing after all
        except OSError as exc:  # EIO when a pty's other side closes
            raise StreamClosed(str(exc)) from exc
        if not data:
            raise StreamClosed("end of stream")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        last = time.monotonic()
        while view:
            wait = None if self.write_timeout is None else max(0.0, self.write_timeout - (time.monotonic() - last))
            _, writable, _ = select.select([], [self.write_fd], [], wait)
            if not writable:  # not even a byte of room for write_timeout: the peer is not reading
                raise StreamClosed(f"the peer accepted nothing for {self.write_timeout:g} s "
                                   f"({len(data) - len(view)} of {len(data)} bytes written); it is not reading")
            try:
                n = os.write(self.write_fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise StreamClosed(str(exc)) from exc
            if n:
                last = time.monotonic()
            view = view[n:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.set_blocking(self.write_fd, True)  # a terminal shared with a shell must not stay non-blocking
        for fd in {self.read_fd, self.write_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)


def open_tty(path: str, baud: int, write_timeout: Optional[float] = 60.0) -> FdStream:
    """A serial device (or pty) in raw mode at `baud`: binary-clean, no echo, no line discipline."""
    if baud not in BAUD_RATES:
        raise ValueError(f"unsupported baud rate {baud}; choose one of {', '.join(map(str, BAUD_RATES))}")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    speed = BAUD_RATES.get(baud)
    if speed is not None:
        attrs[4] = attrs[5] = speed
    attrs[2] |= termios.CLOCAL | termios.CREAD
    attrs[2] &= ~termios.CRTSCTS if hasattr(termios, "CRTSCTS") else ~0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return FdStream(fd, fd, write_timeout)

"""Serial links to a board: the one module of edgeship that imports pyserial.

A link is named by a pyserial URL, so one code path serves every kind of line:

    /dev/ttyUSB0, /dev/ttyACM0, /dev/pts/5    a local tty (exclusively locked while open)
    socket://host:port                        raw TCP, e.g. ser2net or a board's UART bridge
    rfc2217://host:port                       telnet COM-port control (RFC 2217)
    loop://                                   an in-process loopback (tests)

Every pyserial or OS failure is translated here, once, into :class:`sdk.errors.LinkError`
(or :class:`sdk.errors.UsageError` for a URL or baud rate that can never work), so nothing
above this module sees a pyserial exception.
"""

from __future__ import annotations

import contextlib
import errno
from types import TracebackType
from typing import Any

import serial

from edgeship.sdk.errors import LinkError, UsageError

DEFAULT_BAUD = 115200
DEFAULT_WRITE_TIMEOUT = 5.0


def _open_failure(url: str, exc: BaseException) -> str:
    """A one-sentence explanation of why ``url`` could not be opened, with what to check."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT:
        return f"serial port {url} does not exist: check the board is plugged in and the path is right (ls /dev/tty*)"
    if code in (errno.EACCES, errno.EPERM):
        return (f"no permission to open serial port {url}: add your user to the group that owns it "
                f"(usually 'dialout': sudo usermod -aG dialout $USER, then log in again)")
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text:
        return f"serial port {url} is busy: another program (a terminal, another edgeship, ModemManager) is using it; close it"
    if code in (errno.ENXIO, errno.ENODEV, errno.EIO):
        return f"serial port {url} exists but no device answers behind it: check the cable and that the board is powered"
    if "Could not configure port" in text:
        return f"{url} could not be configured as a serial port ({text}): is it really a serial device?"
    return f"could not open serial link {url}: {text}; check the device or address exists and nothing else is using it"


class SerialStream:
    """An open byte stream over a serial line (or anything pyserial can open by URL).

    ``write`` sends everything or raises :class:`LinkError` when the line accepts nothing for
    ``write_timeout`` seconds. ``read`` waits up to ``timeout`` seconds for the first byte and
    then returns whatever else is already buffered, up to ``max_bytes``; ``b""`` means timeout.
    """

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, *, write_timeout: float = DEFAULT_WRITE_TIMEOUT,
                 exclusive: bool = True) -> None:
        self.url = url
        self.baud = baud
        self.write_timeout = write_timeout
        # rfc2217:// refuses any write timeout, and re-negotiates the line with the server
        # (>= 50 ms) whenever the read timeout property changes; see _set_read_timeout.
        self._rfc2217 = url.lower().startswith("rfc2217://")
        # Writes go out in pieces of about a quarter second of line time, so write_timeout
        # bounds a stall ("nothing accepted for that long"), not the size of a transfer.
        self._write_piece = max(64, baud // 40)
        try:
            self._port: Any = serial.serial_for_url(
                url, baudrate=baud, timeout=None, write_timeout=None if self._rfc2217 else write_timeout,
                exclusive=exclusive)
        except ValueError as exc:
            raise UsageError(f"cannot open serial link {url!r} at {baud} baud: {exc} "
                             f"(use a device path, socket://host:port, rfc2217://host:port or loop://)") from exc
        except (serial.SerialException, OSError) as exc:
            raise LinkError(_open_failure(url, exc)) from exc
        self._timeout: float | None = None
        self._closed = False

    def __enter__(self) -> SerialStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"SerialStream({self.url!r}, baud={self.baud}, {state})"

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LinkError(f"serial link {self.url} is already closed")

    def _set_read_timeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"read timeout must be >= 0 or None, not {timeout}")
        if timeout == self._timeout:
            return
        if self._rfc2217:
            # Every implementation reads _timeout at the start of read(); the public setter
            # would also push baud/parity/stop bits to the server and wait for its answer.
            self._port._timeout = timeout
        else:
            self._port.timeout = timeout
        self._timeout = timeout

    def write(self, data: bytes) -> None:
        """Send all of ``data``; :class:`LinkError` if the line stalls or breaks."""
        self._check_open()
        view = memoryview(data).cast("B")
        sent = 0
        try:
            while sent < len(view):
                piece = view[sent:sent + self._write_piece]
                n = self._port.write(piece)
                sent += len(piece) if n is None else n
        except serial.SerialTimeoutException as exc:
            raise LinkError(f"serial link {self.url} accepted nothing for {self.write_timeout:g} s "
                            f"({sent} of {len(view)} bytes sent): is the board still connected and reading?") from exc
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"writing to serial link {self.url} failed after {sent} of {len(view)} bytes: {exc}; "
                            f"is the device still connected?") from exc

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        """Up to ``max_bytes`` bytes; waits at most ``timeout`` s (None: forever) for the first one.

        Returns ``b""`` when nothing arrived in time. Once a byte is there, whatever else is
        already buffered comes with it; this never waits to fill ``max_bytes``.
        """
        self._check_open()
        if max_bytes <= 0:
            return b""
        try:
            self._set_read_timeout(timeout)
            first = bytes(self._port.read(1))
            if not first or max_bytes == 1:
                return first
            if self._rfc2217:  # in_waiting is exact there (socket:// only says "something")
                more = min(self._port.in_waiting, max_bytes - 1)
                return first + bytes(self._port.read(more)) if more > 0 else first
            # Timeout 0 makes every implementation return what is buffered now, without waiting.
            self._set_read_timeout(0)
            return first + bytes(self._port.read(max_bytes - 1))
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"reading from serial link {self.url} failed: {exc}; is the device still connected?") from exc

    def reset_input(self) -> None:
        """Discard whatever has been received but not read yet."""
        self._check_open()
        try:
            self._port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"serial link {self.url} failed: {exc}") from exc

    def close(self) -> None:
        """Close the port; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        # The device may already be gone; there is nothing left to release then.
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.close()


def open_serial(url: str, baud: int = DEFAULT_BAUD, *, write_timeout: float = DEFAULT_WRITE_TIMEOUT,
                exclusive: bool = True) -> SerialStream:
    """Open ``url`` at ``baud``; :class:`LinkError` says what to check when that fails."""
    return SerialStream(url, baud, write_timeout=write_timeout, exclusive=exclusive)


class SerialTransport:
    """A serial board as a Transport: each ``open()`` opens the line (``url``, a pyserial URL) anew."""

    def __init__(self, url: str, baud: int = DEFAULT_BAUD, *, write_timeout: float = DEFAULT_WRITE_TIMEOUT,
                 exclusive: bool = True, name: str | None = None) -> None:
        self.name = name or url
        self.url = url
        self.baud = baud
        self.write_timeout = write_timeout
        self.exclusive = exclusive
        self.bytes_per_second: float | None = baud / 10  # 8N1: ten bit times a byte

    def open(self) -> SerialStream:
        return open_serial(self.url, self.baud, write_timeout=self.write_timeout, exclusive=self.exclusive)

    def __repr__(self) -> str:
        return f"SerialTransport({self.url!r}, baud={self.baud})"

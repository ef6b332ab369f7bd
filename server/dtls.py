"""DTLS handshake failures in the log, with OpenSSL's reason (aiortc loses it). The wrapper
replaces an aiortc internal; ``streamvsr.startup`` installs it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# The OpenSSL reasons of each handshaking RTCDtlsTransport's failed SSL calls.
_ssl_errors: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def logging_dtls_failures(set_state: Callable) -> Callable:
    """Wraps ``RTCDtlsTransport._set_state``: keeps the reasons of the SSL errors while the
    handshake runs and logs them when it fails."""
    from aiortc.rtcdtlstransport import State

    def set_state_logged(self, state) -> None:
        if state == State.CONNECTING:
            _keep_ssl_errors(self)
        elif state == State.FAILED and self._state == State.CONNECTING:
            reasons = _ssl_errors.get(self) or ["no OpenSSL error (closed, or fingerprint/SRTP)"]
            log.warning("DTLS handshake with %s failed: %s", _peer(self), "; ".join(reasons))
        set_state(self, state)

    return set_state_logged


def _keep_ssl_errors(transport: Any) -> None:
    from OpenSSL import SSL

    connection, reasons = transport._ssl, _ssl_errors.setdefault(transport, [])

    def recording(call: Callable) -> Callable:
        def call_recorded(*args):
            try:
                return call(*args)
            except SSL.WantReadError:
                raise
            except SSL.Error as exc:
                reasons.extend(r for r in _reasons(exc) if r not in reasons)
                raise

        return call_recorded

    # aiortc feeds handshake records through recv() and drops its SSL.Error, which takes the
    # reason off OpenSSL's error queue: do_handshake() then fails with an empty error list.
    connection.recv = recording(connection.recv)
    connection.do_handshake = recording(connection.do_handshake)


def _reasons(exc: Exception) -> list[str]:
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return [str(error[-1]) for error in errors if isinstance(error, tuple)]


def _peer(transport: Any) -> str:
    pairs = list(transport.transport._connection._nominated.values())
    return f"{pairs[0].remote_addr[0]}:{pairs[0].remote_addr[1]}" if pairs else "the peer"

"""Consent freshness (RFC 7675) for peers that never answer our consent checks (FFmpeg's WHIP
muxer): authenticated traffic from the peer on the selected pair counts as its consent. These
wrappers replace aioice and aiortc internals; ``streamvsr.startup`` installs them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

# What each aioice Connection heard from its peer since its last consent check: ("stun", protocol
# id, addr) for an authenticated binding request, ("data", protocol id, addr) for a DTLS/SRTP
# datagram and MEDIA once aiortc has authenticated (decrypted) SRTP or SRTCP. Protocol ids, not
# protocols: a protocol refers to its connection, which would keep every entry alive.
_heard: weakref.WeakKeyDictionary[Any, set] = weakref.WeakKeyDictionary()
MEDIA = "media"


def _note(connection: Any, evidence: Any) -> None:
    _heard.setdefault(connection, set()).add(evidence)


def consents(connection: Any, protocol: Any, addr: tuple[str, int]) -> bool:
    """Whether the peer of this pair showed since the last check that it is there and willing."""
    heard = _heard.get(connection, set())
    return ("stun", protocol.id, addr) in heard or (
        ("data", protocol.id, addr) in heard and MEDIA in heard
    )


def _forget(connection: Any, protocol: Any, addr: tuple[str, int]) -> None:
    _heard.get(connection, set()).difference_update(
        {("stun", protocol.id, addr), ("data", protocol.id, addr), MEDIA}
    )


def noting_datagrams(datagram_received: Callable) -> Callable:
    """Wraps ``StunProtocol.datagram_received``: notes non-STUN datagrams and their sender."""

    def datagram_received_noted(self, data, addr) -> None:
        if data and data[0] > 3:  # STUN starts with 0-3, DTLS with 20-63, SRTP with 128-191
            _note(self.receiver, ("data", self.id, (addr[0], addr[1])))
        datagram_received(self, data, addr)

    return datagram_received_noted


def noting_requests(request_received: Callable) -> Callable:
    """Wraps ``Connection.request_received``: notes authenticated binding requests."""

    def request_received_noted(self, message, addr, protocol) -> None:
        if _authenticated(self, message):
            _note(self, ("stun", protocol.id, addr))
        request_received(self, message, addr, protocol)

    return request_received_noted


def _authenticated(connection: Any, message: Any) -> bool:
    attributes = message.attributes
    return (
        "USERNAME" in attributes
        and "MESSAGE-INTEGRITY" in attributes
        and connection._valid_username(attributes["USERNAME"])
        and message.check_message_integrity(connection.local_password.encode("utf8"))
    )


def noting_media(handle: Callable) -> Callable:
    """Wraps ``RTCDtlsTransport._handle_rtp_data``/``_handle_rtcp_data``, which aiortc calls only
    with data it decrypted and authenticated."""

    async def handle_noted(self, data, *args, **kwargs) -> None:
        _note(self.transport._connection, MEDIA)
        await handle(self, data, *args, **kwargs)

    return handle_noted


def forgiving_consent(request: Callable) -> Callable:
    """Wraps ``StunProtocol.request``: an unanswered consent check (aioice sends only those
    without retransmissions) counts as answered when the peer showed consent otherwise."""
    from aioice.stun import TransactionTimeout

    async def request_or_consent(self, message, addr, integrity_key=None, retransmissions=None):
        response = request(self, message, addr, integrity_key, retransmissions)
        if retransmissions != 0:
            return await response
        try:
            await response
        except TransactionTimeout:
            if not consents(self.receiver, self, addr):
                raise
        finally:
            _forget(self.receiver, self, addr)  # each check needs fresh evidence
        return None  # aioice's consent loop ignores the response

    return request_or_consent

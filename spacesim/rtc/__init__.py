"""The one package that touches aiortc / aioice internals (aiortc==1.16.0, aioice 0.13).

Shared by the room server (spacesim.server) and the synthetic clients (spacesim.client).
Everything else in spacesim uses aiortc's public API or this package. Each module
registers the internals it uses with :mod:`spacesim.rtc.internals` (next to its
imports, naming the aiortc/aioice source each comes from), and importing the package
checks all of them: an aiortc upgrade that drops or renames one raises
:class:`MissingInternals` here instead of failing silently at run time.

Modules, one concept each:

* :mod:`.peer` -- :func:`new_peer_connection` (no ICE servers: ``iceServers=None``
  would make aiortc add a public STUN server) and :func:`use_host_addresses` (the
  host addresses aioice gathers candidates on; it skips 127.0.0.1 by default).
* :mod:`.tap` -- :func:`tap_rtp`: encoded, decrypted ``RtpPacket`` s of a receiver go
  to a callback before aiortc's jitter buffer; the receiver's decoder thread is
  stopped so nothing is decoded; RTCP receiver reports keep working.
* :mod:`.direct` -- :func:`receive_rtp_direct`, the listeners' receive path: RTP is
  taken off the UDP socket's protocol callback, SRTP-unprotected and handed to a
  plain function as bytes (no asyncio queue, task wake-up, ``RtpPacket`` or jitter
  buffer); STUN, DTLS and RTCP still go to aioice / aiortc.
* :mod:`.batch` -- :class:`BatchReader`: the direct path's sockets read together on a
  timer, with kernel receive times.
* :mod:`.native_rx` -- the batch reader's loop in machine code (numba): ``recvmmsg``,
  libsrtp's ``srtp_unprotect``, and lite listeners' packets counted in rows of arrays.
* :mod:`.writer` -- :class:`RtpWriter`: writes RTP packets for a sending transceiver
  straight to its connection's UDP socket, built and SRTP-protected in place in a
  scratch buffer by libsrtp (through pylibsrtp's cffi binding), with the sender's SSRC
  and the negotiated payload type. The sender's track never yields, so aiortc itself
  sends no RTP on it; its RTCP sender reports are aiortc's own, or, given a
  :class:`SenderReports`, sent for all writers of a connection as one compound packet
  from one timer.
* :mod:`.native` -- :class:`~spacesim.rtc.native.FanOut`: the server's fan-out as a
  numba kernel (rewrite, header, libsrtp protect and ``sendto`` for every listener of a
  slot in one call); writers lend it their direct path (``RtpWriter.arm``). Not imported
  here: only the server loads numba.
* :mod:`.jitter` -- :class:`AudioJitterBuffer`: aiortc's audio jitter buffer fed
  with packets built from bytes (probe listeners).
* :mod:`.internals` -- the registry and the check.
"""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from spacesim.rtc.batch import BatchReader
from spacesim.rtc.direct import DirectRtp, OnRtp, receive_rtp_direct
from spacesim.rtc.internals import MissingInternals, check, missing_internals
from spacesim.rtc.jitter import AudioJitterBuffer
from spacesim.rtc.peer import DEFAULT_HOST_ADDRESSES, new_peer_connection, use_host_addresses
from spacesim.rtc.tap import OnPacket, tap_rtp
from spacesim.rtc.writer import RtpWriter, SenderReports, ntp_now

__all__ = [
    "DEFAULT_HOST_ADDRESSES",
    "AudioJitterBuffer",
    "BatchReader",
    "DirectRtp",
    "MissingInternals",
    "OnPacket",
    "OnRtp",
    "RtpPacket",
    "RtpWriter",
    "SenderReports",
    "missing_internals",
    "new_peer_connection",
    "ntp_now",
    "receive_rtp_direct",
    "tap_rtp",
    "use_host_addresses",
]

check()  # every module above has registered its internals: fail loudly now, not later

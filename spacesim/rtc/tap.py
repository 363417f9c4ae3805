"""Tapping a receiver's encoded RTP before aiortc's jitter buffer; stopping its decoder."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtpPacket

from spacesim.rtc import internals as _i

__all__ = ["OnPacket", "RtpPacket", "tap_rtp"]

_i.register(
    __name__,
    _i.attr(
        RTCRtpReceiver,
        "_handle_rtp_packet",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver._handle_rtp_packet",
    ),
    # what calls the method tap_rtp overrides, with a parsed, decrypted packet
    _i.attr(RTCDtlsTransport, "_handle_rtp_data", "aiortc/rtcdtlstransport.py _handle_rtp_data"),
    _i.attr(
        RTCRtpReceiver,
        "_RTCRtpReceiver__stop_decoder",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__stop_decoder",
    ),
    _i.assigned(
        RTCRtpReceiver,
        "_RTCRtpReceiver__decoder_thread",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__decoder_thread",
    ),
    _i.assigned(
        RTCRtpReceiver,
        "_RTCRtpReceiver__rtcp_task",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__rtcp_task",
    ),
    _i.assigned(
        RTCRtpReceiver,
        "_RTCRtpReceiver__rtcp_started",
        "aiortc/rtcrtpreceiver.py RTCRtpReceiver.__rtcp_started",
    ),
)

OnPacket = Callable[[RtpPacket, int], Awaitable[None]]
"""``await on_packet(packet, arrival_time_ms)``; arrival time is aiortc's clock (ms)."""


def _stop_decoder(receiver: RTCRtpReceiver) -> None:
    # aiortc/rtcrtpreceiver.py RTCRtpReceiver.__stop_decoder: puts None in the
    # decoder queue and joins the "audio-decoder" thread; a no-op once stopped.
    receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]


def tap_rtp(receiver: RTCRtpReceiver, on_packet: OnPacket) -> None:
    """Send the receiver's encoded RTP packets to ``on_packet``; decode nothing.

    Call it before ``receiver.receive()`` runs -- e.g. in the peer connection's
    "track" event or right after ``setRemoteDescription`` (aiortc calls
    ``receive()`` from ``RTCPeerConnection.__connect`` only once ICE and DTLS are
    up). If the decoder already runs it is stopped at once.

    * ``RTCDtlsTransport._handle_rtp_data`` (aiortc/rtcdtlstransport.py) awaits
      ``receiver._handle_rtp_packet(packet, arrival_time_ms=...)`` with a decrypted,
      parsed ``RtpPacket``; a per-instance override sees it before the jitter buffer.
      The original still runs afterwards, so RTCP receiver reports, ``getStats()``
      and synchronisation sources stay right; with the decoder stopped it only
      feeds statistics and a bounded 16-packet jitter buffer.
    * ``RTCRtpReceiver.receive`` (aiortc/rtcrtpreceiver.py) starts the decoder
      thread; a per-instance wrapper stops it right after (``__stop_decoder``), so
      no frame is decoded and no unbounded decoded-frame queue grows.
    """
    original_handle = receiver._handle_rtp_packet

    async def _handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        await on_packet(packet, arrival_time_ms)
        await original_handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]
    _no_decoder(receiver)


def _stop_rtcp(receiver: RTCRtpReceiver) -> None:
    # aiortc/rtcrtpreceiver.py: _run_rtcp sets __rtcp_started first thing, and on
    # cancellation sets __rtcp_exited, which stop() awaits after cancelling the task
    # itself; so cancel only a task that has started, or stop() would wait forever.
    task = receiver._RTCRtpReceiver__rtcp_task  # type: ignore[attr-defined]
    if task is not None and receiver._RTCRtpReceiver__rtcp_started.is_set():  # type: ignore[attr-defined]
        task.cancel()


def _no_decoder(receiver: RTCRtpReceiver, stop_rtcp: bool = False) -> None:
    """Stop the receiver's decoder thread right after aiortc starts it (or now).

    ``RTCRtpReceiver.receive`` (aiortc/rtcrtpreceiver.py) starts an "audio-decoder"
    thread; a per-instance wrapper stops it right after (``__stop_decoder``). With
    ``stop_rtcp`` it also cancels the receiver's RTCP task (``_run_rtcp``, started by
    ``receive()`` too) once that has started -- for receivers that get no RTP, whose
    task would wake about once a second only to find no stream to report on.
    """
    original_receive = receiver.receive

    async def receive(parameters: Any) -> None:
        await original_receive(parameters)
        _stop_decoder(receiver)
        if stop_rtcp:  # the task's first step is already queued: this runs after it
            asyncio.get_running_loop().call_soon(_stop_rtcp, receiver)

    receiver.receive = receive  # type: ignore[method-assign]
    if getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is not None:
        _stop_decoder(receiver)

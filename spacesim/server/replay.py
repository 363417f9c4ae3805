"""Replay a recording over WebRTC: its Ogg/Opus packets sent as RTP, paced in real time.

A replay listener offers the same SDP as a join (`spacesim.server.media`: an optional
publish section, then ``slots`` listen sections); the recording plays on the first
listen section (the others stay silent), from ``offset`` seconds. The packets are the
file's, as the speakers sent them (stream copy both ways: nothing is decoded); their RTP
timestamps follow the file's timeline, so the silence the recording filled gaps with
plays as silence. The connection closes itself a second after the last packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path

from aiortc import RTCPeerConnection, RTCSessionDescription

from spacesim import rtc
from spacesim.server.media import MediaSetupError, parse_offer
from spacesim.server.recording import RATE, REPLAYS, read_packets

__all__ = ["Replays"]

log = logging.getLogger("spacesim.server.replay")

#: Seconds a replay connection may take to come up before it is given up.
CONNECT_TIMEOUT_S = 30.0


class Replays:
    """The replay connections of one server (closed with it)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._pcs: set[RTCPeerConnection] = set()

    @property
    def active(self) -> int:
        return len(self._pcs)

    async def start(self, path: Path, offset_s: float, offer_sdp: str, slots: int) -> str:
        """The SDP answer; the replay starts once the connection is up.

        ValueError for an offer of the wrong shape (the client's fault), MediaSetupError
        if setting it up failed after the offer was accepted (logged here).
        """
        shape = parse_offer(offer_sdp, slots)
        loop = asyncio.get_running_loop()
        packets = await loop.run_in_executor(None, read_packets, path, int(offset_s * RATE))
        pc = rtc.new_peer_connection()
        self._pcs.add(pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            await self._close(pc)
            raise ValueError(str(exc) or type(exc).__name__) from None
        try:
            by_mid = {t.mid: t for t in pc.getTransceivers()}
            writers = [rtc.RtpWriter(by_mid[mid]) for mid in shape.listen_mids]
            await pc.setLocalDescription(await pc.createAnswer())
            answer: str = pc.localDescription.sdp
        except Exception as exc:
            await self._close(pc)
            log.error("replay setup failed", exc_info=True)
            raise MediaSetupError(f"{type(exc).__name__}: {exc}") from exc
        REPLAYS.inc()
        task = asyncio.ensure_future(self._play(pc, writers[0], packets))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return answer

    async def _play(
        self, pc: RTCPeerConnection, writer: rtc.RtpWriter, packets: list[tuple[int, bytes]]
    ) -> None:
        try:
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while pc.connectionState != "connected":
                if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.02)
            writer.bind()
            seq = random.getrandbits(16)
            ts0 = random.getrandbits(32)
            first = packets[0][0] if packets else 0
            start = time.monotonic()
            for i, (pos, payload) in enumerate(packets):
                if pc.connectionState != "connected":
                    return
                wait = start + (pos - first) / RATE - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                ts = (ts0 + pos - first) & 0xFFFFFFFF
                marker = 1 if i == 0 else 0
                if not writer.send_now(seq, ts, marker, payload, rtc.ntp_now()):
                    await writer.write(seq, ts, marker, payload)
                seq = (seq + 1) & 0xFFFF
            await asyncio.sleep(1.0)  # the last packets' way out
        except ConnectionError:
            pass  # the listener went away
        except Exception:
            log.exception("replay failed")
        finally:
            await self._close(pc)

    async def _close(self, pc: RTCPeerConnection) -> None:
        self._pcs.discard(pc)
        with contextlib.suppress(Exception):
            await pc.close()

    async def close(self) -> None:
        """Close every replay connection (the server is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        for pc in list(self._pcs):
            await self._close(pc)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

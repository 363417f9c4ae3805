"""ListenerStats: latency from the speakers' marks, loss from the streams' RTP sequence."""

from __future__ import annotations

import struct

from spacesim.client.listener import ListenerStats
from spacesim.client.opus import mark

FRAME = b"\x78" + b"\x01" * 40


def packet(ssrc: int, seq: int, sender: int, mark_seq: int) -> bytes:
    header = struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, seq * 960 & 0xFFFFFFFF, ssrc)
    return header + mark(FRAME, sender, mark_seq, 1_000)


def test_a_speaker_the_server_did_not_forward_is_not_loss() -> None:
    """The server hands a slot from speaker 1 to speaker 2 and back: speaker 1's marks
    jump (the server dropped its packets on purpose), the slot's RTP sequence does not."""
    st = ListenerStats()
    seq = 65_530  # and across the 16-bit wrap
    for k in range(10):
        st.on_rtp(0, packet(7, seq, 1, k), 2_000)
        seq += 1
    for k in range(10):
        st.on_rtp(0, packet(7, seq, 2, k), 2_000)
        seq += 1
    for k in range(50, 60):
        st.on_rtp(0, packet(7, seq, 1, k), 2_000)
        seq += 1
    assert st.totals() == (30, 0)
    assert st.senders[1].lost == 40  # what the marks alone would have called loss


def test_packets_lost_on_the_way_are_loss_and_a_rejoin_is_a_new_stream() -> None:
    st = ListenerStats()
    for seq in [*range(100, 110), *range(113, 120)]:  # 3 lost
        st.on_rtp(0, packet(7, seq, 1, seq), 2_000)
    st.on_rtp(0, packet(7, 105, 1, 105), 2_000)  # a late duplicate moves nothing back
    for seq in range(40_000, 40_010):  # a new connection: new SSRC, unrelated sequence
        st.on_rtp(0, packet(9, seq, 1, seq), 2_000)
    received, lost = st.totals()
    assert (received, lost) == (28, 3 - 1)  # the duplicate counts as received

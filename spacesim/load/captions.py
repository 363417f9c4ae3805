"""How well live captions read: a caption's word errors against what its speaker said.

A swarm speaker plays its clip (`spacesim.load.voice.clip_of`) in talk spurts: the clip
advances only while talking and loops, and the server cuts captions at pauses, so a
final caption is some stretch of the looped transcript, not the whole of it.
`fragment_errors` therefore aligns the caption with the stretch of the looped
transcript it matches best (approximate substring matching: Sellers, "The theory and
computation of evolutionary distances: pattern recognition", J. Algorithms 1980) and
counts substitutions, insertions and deletions there; the word error rate is errors
over that stretch's words, pooled over captions by `spacesim.results.summarise`.
"""

from __future__ import annotations

import math
import re

__all__ = ["edits", "fragment_errors", "words"]


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (both word-error measures count these)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def edits(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions): the word
    errors of a whole transcript, as `benchmarks/bench_captions.py` scores it."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def fragment_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) of `hypothesis` against its best-matching stretch
    of `reference` repeated (a clip played in a loop, entered anywhere).

    The stretch is free to start and end anywhere, so words cut off at either end of
    the caption cost nothing; among equally good stretches the longest counts (the
    lower rate). An empty hypothesis is (0, 0): nothing was said to compare.
    """
    hyp, ref = words(hypothesis), words(reference)
    if not hyp or not ref:
        return (len(hyp), 0)
    loops = math.ceil(len(hyp) / len(ref)) + 2
    looped = ref * loops
    m = len(looped)
    # cost[j], start[j]: the best alignment of hyp[:i] ending after looped[:j]
    cost = [0] * (m + 1)
    start = list(range(m + 1))
    for i, h in enumerate(hyp, 1):
        new_cost = [i] + [0] * m
        new_start = [0] * (m + 1)
        for j in range(1, m + 1):
            best = cost[j - 1] + (h != looped[j - 1])  # match or substitute
            origin = start[j - 1]
            if cost[j] + 1 < best or (cost[j] + 1 == best and start[j] < origin):
                best, origin = cost[j] + 1, start[j]  # an inserted hyp word
            if new_cost[j - 1] + 1 < best or (
                new_cost[j - 1] + 1 == best and new_start[j - 1] < origin
            ):
                best, origin = new_cost[j - 1] + 1, new_start[j - 1]  # a deleted ref word
            new_cost[j], new_start[j] = best, origin
        cost, start = new_cost, new_start
    errors, span = min((cost[j], -(j - start[j])) for j in range(m + 1))
    return errors, -span

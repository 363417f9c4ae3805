"""Posts, voice posts, voice DMs and Fleets: their audio files, the expiry sweeper and
captions of voice posts (docs/protocol.md, Posts, DMs and Fleets).

An upload streams to a temporary file while `OggOpusCheck` reads it; only audio that
passes is fsynced and renamed into place, and its row is written after the file (a
crash in between leaves an orphan file, which `recover` deletes at the next start; never
a row without its file). Expiry deletes the row first, then the file, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from spacesim.protocol import ProtocolError
from spacesim.server.metrics import REGISTRY
from spacesim.server.oggcheck import AudioError, OggOpusCheck
from spacesim.server.recording import read_packets
from spacesim.server.room import RateLimiter

__all__ = [
    "FLEET_TTL_S",
    "MAX_PINNED",
    "VOICE_MAX_BYTES",
    "VOICE_MAX_S",
    "Posts",
    "transcribe_job",
]

log = logging.getLogger("spacesim.server.posts")

#: The longest voice post or voice DM (seconds of audio, counted from its packets).
VOICE_MAX_S = 140.0
#: The largest upload: 140 s of Opus at 128 kbit/s is 2.2 MB; room for Ogg overhead.
VOICE_MAX_BYTES = 3 * 1024 * 1024
#: A Fleet is visible this long after it is posted.
FLEET_TTL_S = 24 * 3600.0
#: Posts a space may have pinned at once (hosts and co-hosts pin).
MAX_PINNED = 3
#: Seconds a whole voice upload may take: 3 MiB at 256 kbit/s takes about 100 s.
UPLOAD_S = 120.0
#: Longest text of a post, Fleet or DM (characters).
MAX_TEXT = 280
#: Seconds between two sweeps of expired Fleets (and one at startup).
SWEEP_S = 60.0
#: Posts, Fleets and DMs a user may send: (per second, burst) -- 60 a minute, 20 at once.
POSTS_PER_USER = (1.0, 20.0)
#: Posts a user may share into spaces: 10 a minute, 5 at once.
SHARES_PER_USER = (10 / 60, 5.0)

#: What posts cost, for `/metrics` (uploads, their bytes and audio, Fleets expired).
UPLOADS = Counter("spacesim_voice_uploads", "Voice posts and DMs stored", registry=REGISTRY)
UPLOAD_BYTES = Counter(
    "spacesim_voice_upload_bytes", "Bytes of voice posts and DMs stored", registry=REGISTRY
)
UPLOAD_SECONDS = Counter(
    "spacesim_voice_upload_seconds", "Seconds of audio in voice posts and DMs", registry=REGISTRY
)
UPLOADS_REFUSED = Counter(
    "spacesim_voice_uploads_refused",
    "Voice uploads refused (bad, too long, too large)",
    registry=REGISTRY,
)
FLEETS_EXPIRED = Counter(
    "spacesim_fleets_expired", "Fleets deleted at expiry (rows and files)", registry=REGISTRY
)


def transcribe_job(key: str, packets: list[bytes]) -> str:
    """In a recogniser process: the words of a whole voice post (final captions joined)."""
    from spacesim.server import captions

    results = captions.work_feed(key, 0.0, packets, False) + captions.work_end(key)
    return " ".join(text for text, final, _, _ in results if final and text).strip()


Transcribe = Callable[[str, list[bytes]], Awaitable[str]]


class Posts:
    """The server's post media (files under `root`), its sweeper and caption jobs.

    `clock` is the store's (tests give the store a clock they move); the sweeper runs
    every `sweep_s` seconds of real time and deletes what that clock says has expired.
    """

    def __init__(
        self,
        root: Path,
        store: Any,
        clock: Callable[[], float],
        transcribe: Transcribe | None = None,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self.root = root
        self.store = store
        self.clock = clock
        self.transcribe = transcribe
        self.sweep_s = sweep_s
        self.sends = RateLimiter(*POSTS_PER_USER)
        self.shares = RateLimiter(*SHARES_PER_USER)
        self.expired = 0  # Fleets deleted since start
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, set[asyncio.Event]] = {}  # long polls of notifications
        self.max_wait_s = 30.0  # the longest a long poll waits (a test server shortens it)
        self.upload_s = UPLOAD_S  # the longest a whole upload may take
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, post_id: str) -> Path:
        return self.root / f"{post_id}.opus"

    @staticmethod
    def new_id() -> str:
        return "p-" + secrets.token_hex(8)

    # ------------------------------------------------------------------ uploads

    async def receive(self, post_id: str, chunks: AsyncIterator[bytes]) -> tuple[int, float]:
        """Stream an upload into `post_id`'s file, checking it as it comes; (bytes, s).

        Refused audio leaves no file behind. The file is on disk (fsynced, renamed into
        place, directory fsynced) when this returns, before any row names it.
        """
        check = OggOpusCheck(VOICE_MAX_BYTES, VOICE_MAX_S)
        tmp = self.root / f".{post_id}.part"
        loop = asyncio.get_running_loop()
        try:
            with open(tmp, "wb") as f:
                async with asyncio.timeout(self.upload_s):  # a trickle holds nothing forever
                    async for chunk in chunks:
                        check.feed(chunk)
                        f.write(chunk)
                duration = check.finish()
                await loop.run_in_executor(None, _sync, f)
            os.replace(tmp, self.path(post_id))
            await loop.run_in_executor(None, _sync_dir, self.root)
        except AudioError as exc:
            UPLOADS_REFUSED.inc()
            raise ProtocolError(exc.code, exc.reason) from None
        except TimeoutError:
            UPLOADS_REFUSED.inc()
            raise ProtocolError(
                "request_timeout", f"the upload took over {self.upload_s:g} s"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        UPLOADS.inc()
        UPLOAD_BYTES.inc(check.size)
        UPLOAD_SECONDS.inc(duration)
        return check.size, duration

    def caption(self, post_id: str) -> None:
        """Recognise a voice post's words off the request path; the row says when done."""
        task = asyncio.ensure_future(self._caption(post_id))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _caption(self, post_id: str) -> None:
        try:
            if self.transcribe is None:
                raise RuntimeError("no recogniser")
            loop = asyncio.get_running_loop()
            packets = await loop.run_in_executor(None, read_packets, self.path(post_id))
            text = await self.transcribe(post_id, [p for _, p in packets])
            self.store.set_post_captions(post_id, "done", text)
        except Exception:
            log.exception("captions of post %s failed", post_id)
            with contextlib.suppress(Exception):
                self.store.set_post_captions(post_id, "failed", None)

    async def settle(self) -> None:
        """Wait for the caption jobs under way (tests; shutdown)."""
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    # ------------------------------------------------------------------ notifications

    def waiter(self, user: str) -> asyncio.Event:
        """An event set when `user` gets a notification (a long poll waits on it)."""
        signal = asyncio.Event()
        self._waiting.setdefault(user, set()).add(signal)
        return signal

    def unwait(self, user: str, signal: asyncio.Event) -> None:
        waiting = self._waiting.get(user)
        if waiting is not None:
            waiting.discard(signal)
            if not waiting:
                del self._waiting[user]

    def wake(self, users: Iterable[str]) -> None:
        for user in users:
            for signal in self._waiting.get(user, ()):
                signal.set()

    # ------------------------------------------------------------------ expiry

    def expire(self) -> list[str]:
        """Delete the rows of expired Fleets (one transaction); their ids, whose files
        are still to delete (`delete_files`)."""
        gone = self.store.expire_posts(self.clock())
        self.expired += len(gone)
        FLEETS_EXPIRED.inc(len(gone))
        return [p.id for p in gone if p.audio_bytes is not None]

    def delete_files(self, ids: list[str]) -> None:
        """Unlink the files of deleted posts (no database: any thread may run it)."""
        for post_id in ids:
            with contextlib.suppress(FileNotFoundError):
                self.path(post_id).unlink()

    def sweep(self) -> int:
        """Delete expired Fleets, rows then files, here and now; how many Fleets."""
        before = self.expired
        self.delete_files(self.expire())
        return self.expired - before

    def recover(self) -> int:
        """At startup, before any request: expired Fleets go, and so do files no row
        names (a crash between a file and its row, or between a row's deletion and its
        file's); nothing is being uploaded yet. Returns how many Fleets expired."""
        n = self.sweep()
        keep = self.store.audio_post_ids()
        self.delete_files([p.stem for p in self.root.glob("*.opus") if p.stem not in keep])
        for part in self.root.glob(".*.part"):  # an upload the crash cut short
            part.unlink(missing_ok=True)
        return n

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.sweep_s)
                try:  # the rows here (the store's thread), the files in a worker thread
                    await asyncio.to_thread(self.delete_files, self.expire())
                except Exception:
                    log.exception("fleet expiry sweep failed")

        if self._task is None:
            self._task = asyncio.ensure_future(loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in list(self._jobs):
            job.cancel()
        await self.settle()


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def captioner_transcribe(captioner: Any) -> Transcribe:
    """A `Transcribe` running `transcribe_job` in one of the server's recogniser
    processes (the least loaded), the same recogniser as live captions."""

    async def run(key: str, packets: list[bytes]) -> str:
        i = captioner.assign()
        worker = captioner.workers[i]
        try:
            future = worker.executor.submit(transcribe_job, f"post:{key}", packets)
            return str(await asyncio.wrap_future(future))
        finally:
            worker.streams -= 1

    return run

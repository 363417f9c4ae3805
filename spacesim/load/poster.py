"""The swarm's voice poster: one Locust HTTP user for the scenario's ``posts`` population.

Import after ``import locust`` (gevent must patch first). Each second it runs what
`spacesim.load.posting.PostingPlan` says is due: voice posts, voice DMs and voice
Fleets uploaded (``POST /v1/posts/voice``, ``/v1/dms/{user}/voice``,
``/v1/fleets/voice``, an Ogg/Opus body) by a few synthetic authors, and plays of them
(``GET /v1/posts/{id}/audio``) by the next author, who follows each author (so sees
its Fleets) and receives its DMs. Fleets past their ``expires_at`` are dropped (and
their owed plays with them).

Records (role ``post``, ``dm`` or ``fleet``): ``voice_upload`` (request -> 201),
``posts_uploaded``, ``upload_bytes``, ``voice_playback_start`` (request -> the first
bytes of the audio), ``posts_played``, ``egress_bytes``; each second ``storage_bytes``
(what it uploaded and has not seen expire) and ``fleets_expired``.
"""

from __future__ import annotations

import time
from typing import Any

from locust import HttpUser, constant, task  # gevent patches first

# isort: split
from spacesim import behaviour
from spacesim.load.hooks import ensure
from spacesim.load.posting import Item, PostingPlan, voice_file

__all__ = ["AUTHORS", "Poster"]

#: Synthetic authors the population's uploads rotate over (each may post 60 a minute).
AUTHORS = 20
_UPLOAD = {"post": "/v1/posts/voice", "fleet": "/v1/fleets/voice"}


class Poster(HttpUser):
    """The posts population (``fixed_count`` is 1 when ``posts.users`` > 0, else 0)."""

    fixed_count = 1
    weight = 0
    wait_time = constant(1)

    def on_start(self) -> None:
        self.ctx = ctx = ensure(self.environment, self.host or "")
        posts = ctx.sc.posts
        self.plan = PostingPlan(posts, ctx.rng)
        n = max(2, min(AUTHORS, posts.users))
        tag = f"poster-{ctx.tag}-{next(ctx.ids)}"
        self.users = [f"{tag}-{i}" for i in range(n)]
        self.tokens = []
        for user in self.users:
            r = self.client.post("/v1/dev/token", json={"user": user}, name="token")
            r.raise_for_status()
            self.tokens.append(r.json()["token"])
        for i, user in enumerate(self.users):  # the next author follows this one
            r = self.client.post(
                "/v1/follows", json={"user": user}, headers=self._auth((i + 1) % n), name="follow"
            )
            r.raise_for_status()
        self.items: list[Item] = []
        self.last = time.monotonic()

    def _auth(self, i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[i]}"}

    @task
    def step(self) -> None:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        for role, seconds in self.plan.uploads(dt):
            self._upload(role, seconds)
        wall = time.time()
        expired = [it for it in self.items if it.expires is not None and it.expires <= wall]
        for it in expired:
            self.items.remove(it)
            self.plan.expire(it.role, behaviour.FLEET_TTL)
        live: dict[str, list[Item]] = {r: [] for r in behaviour.VOICE_ROLES}
        for it in self.items:
            live[it.role].append(it)
        for role in self.plan.plays(dt, {r: len(v) for r, v in live.items()}):
            item = behaviour.pick(live[role], self.ctx.rng)
            if item is not None:
                self._play(item)
        self.ctx.add("fleets_expired", "", "", "", len(expired))
        self.ctx.add("storage_bytes", "", "", "", sum(it.size for it in self.items))

    def _upload(self, role: str, seconds: float) -> None:
        n = len(self.users)
        author = int(self.ctx.rng.uniform() * n) % n
        reader = (author + 1) % n
        url = _UPLOAD.get(role) or f"/v1/dms/{self.users[reader]}/voice"
        data = voice_file(max(1, round(seconds)))
        headers = {**self._auth(author), "Content-Type": "audio/ogg"}
        t0 = time.perf_counter()
        r = self.client.post(url, data=data, headers=headers, name=f"voice_upload_{role}")
        took = time.perf_counter() - t0
        if r.status_code != 201:
            return
        post: dict[str, Any] = r.json()
        expires = post.get("expires_at")
        self.items.append(
            Item(post["id"], role, author, len(data), None if expires is None else float(expires))
        )
        self.plan.uploaded(role)
        who = self.users[author]
        self.ctx.add("voice_upload", "", who, role, took)
        self.ctx.add("posts_uploaded", "", who, role, 1)
        self.ctx.add("upload_bytes", "", who, role, len(data))

    def _play(self, item: Item) -> None:
        reader = (item.author + 1) % len(self.users)
        url = f"/v1/posts/{item.id}/audio"
        t0 = time.perf_counter()
        name = f"voice_play_{item.role}"
        # Locust's with-block needs catch_response (locust/clients.py ResponseContextManager)
        with self.client.get(
            url, headers=self._auth(reader), stream=True, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return
            chunks = r.iter_content(65536)
            first = next(chunks, b"")
            ttfb = time.perf_counter() - t0
            size = len(first) + sum(len(c) for c in chunks)
            r.success()
        who = self.users[reader]
        self.ctx.add("voice_playback_start", "", who, item.role, ttfb)
        self.ctx.add("posts_played", "", who, item.role, 1)
        self.ctx.add("egress_bytes", "", who, item.role, size)

"""SimPy processes: plain generator functions taking ``env`` and what they act on.

Nothing here schedules an event per packet. Per listener there is one session
process; audience behaviour (reactions, hand raises, reports, blocks) is drawn per
room per tick as Poisson counts over the room's current listeners, which is exactly a
Poisson process while the count holds; audio is sampled for a few listeners a tick.

Every behavioural decision (session length, network path, talk spurts, counts per
tick, the host's answers, report outcomes, moderation actions and their targets) is a
`spacesim.behaviour` function, the same the swarm calls; every change to a space goes
through `spacesim.policy`. Per room: `lifecycle` (scheduled start, planned end),
`arrivals`, `audience`, `host_moderation` (the `moderation` rates) and `timeline`;
after a recorded space ends, `replays` (``features.replay_rate``).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
from collections.abc import Generator, Iterator

import simpy

from spacesim import behaviour, policy
from spacesim.scenario import (
    ConstantArrivals,
    FlashCrowdArrivals,
    PiecewiseArrivals,
    PoissonArrivals,
    RampArrivals,
    Scenario,
)
from spacesim.sim.decisions import ReportHint
from spacesim.sim.draws import Draws
from spacesim.sim.world import Room, World

__all__ = [
    "arrival_times",
    "arrivals",
    "audience",
    "hand_raise",
    "host_action",
    "host_moderation",
    "lifecycle",
    "listener_session",
    "monitor",
    "open_space",
    "replay_session",
    "replays",
    "report_review",
    "stage",
    "talker",
    "timeline",
]

Proc = Generator[simpy.Event, object, None]


# --------------------------------------------------------------------------- arrivals


def _segments(profile: object) -> list[tuple[float, float, float, float]]:
    """The profile's rate as linear pieces (t0, t1, rate at t0, rate at t1)."""
    inf = math.inf
    if isinstance(profile, PoissonArrivals):
        return [(0.0, inf, profile.rate, profile.rate)]
    if isinstance(profile, RampArrivals):
        return [
            (0.0, profile.over, profile.start, profile.end),
            (profile.over, inf, profile.end, profile.end),
        ]
    if isinstance(profile, PiecewiseArrivals):
        steps = profile.steps
        ends = [s.at for s in steps[1:]] + [inf]
        return [(s.at, e, s.rate, s.rate) for s, e in zip(steps, ends, strict=True)]
    if isinstance(profile, FlashCrowdArrivals):
        return [(0.0, inf, profile.base, profile.base)]
    raise TypeError(f"no segments for {type(profile).__name__}")


def _poisson_times(
    segments: list[tuple[float, float, float, float]], horizon: float, draws: Draws
) -> Iterator[float]:
    """A non-homogeneous Poisson process by thinning within each linear piece."""
    for t0, t1, r0, r1 in segments:
        if t0 >= horizon:
            return
        rmax = max(r0, r1)
        if rmax <= 0:
            continue
        end = min(t1, horizon)
        slope = (r1 - r0) / (t1 - t0) if r1 != r0 else 0.0
        t = t0
        while True:
            t += draws.exp(1.0 / rmax)
            if t >= end:
                break  # memoryless: the next piece starts afresh at t1
            if slope == 0.0 or draws.uniform() * rmax < r0 + slope * (t - t0):
                yield t


def arrival_times(
    scenario: Scenario, draws: Draws, start: float = 0.0, end: float | None = None
) -> Iterator[float]:
    """Arrival instants for one room, in order: the profile's clock starts at `start`
    (when the space goes live) and arrivals stop at `end` (default: the run's end)."""
    profile = scenario.arrivals
    horizon = (scenario.duration if end is None else end) - start
    if horizon <= 0:
        return iter(())
    if isinstance(profile, ConstantArrivals):
        if profile.rate <= 0:
            return iter(())
        gap = 1.0 / profile.rate
        return iter(
            [start + k * gap for k in range(1, int(horizon / gap) + 1) if k * gap < horizon]
        )
    background = _poisson_times(_segments(profile), horizon, draws)
    if isinstance(profile, FlashCrowdArrivals):
        bursts: list[float] = []
        for b in profile.bursts:
            bursts.extend(b.at + draws.exp(b.over) for _ in range(b.size))
        bursts = sorted(t for t in bursts if t < horizon)
        times: Iterator[float] = heapq.merge(background, bursts)
    else:
        times = background
    return (start + t for t in times) if start else times


_STAGE_ROLES = frozenset({policy.Role.HOST, policy.Role.COHOST, policy.Role.SPEAKER})
_LIVE = policy.SpaceStatus.LIVE
_ENDED = policy.SpaceStatus.ENDED


def arrivals(env: simpy.Environment, world: World, room: Room) -> Proc:
    """Listeners arrive per the scenario's profile, counted from the space's start, until
    it ends; each gets a session process."""
    sc = world.sc
    draws = world.draws
    assert room.started is not None
    yield room.started
    space = room.space
    prefix = f"{room.name}/L"
    decide = world.decide
    times = arrival_times(sc, draws, env.now, sc.rooms.ends_at)
    for n, (t, who) in enumerate(decide.arrivals(room.number, times)):
        if t > env.now:
            yield env.timeout(t - env.now)
        if space.status is _ENDED:
            return
        pid = who or f"{prefix}{n}"
        length = decide.session_length(room.number, pid)
        env.process(listener_session(env, world, room, pid, length))


def listener_session(
    env: simpy.Environment, world: World, room: Room, pid: str, length: float
) -> Proc:
    """Join -> first audio -> listen -> leave (behaviour is drawn per room, see `audience`)."""
    who = world.join_listener(room, pid)
    if who is None:
        return
    if world.heard_at_join(room, who, pid):
        yield env.timeout(who.joined_at - env.now + length)
    else:
        yield env.timeout(who.joined_at - env.now)
        world.heard_soon(room, pid)
        yield env.timeout(length)
    world.leave(room, pid)


def replays(env: simpy.Environment, world: World, room: Room) -> Proc:
    """Once a recorded space has ended, replay listeners arrive at it until the run ends
    (`Decisions.replay_arrivals` each tick from the end, as the swarm's `ReplayCrowd`
    draws them each second), each in a `replay_session`."""
    if not room.recording:
        return
    assert room.ended is not None
    yield room.ended
    tick = world.sc.sim.tick
    n = 0
    while True:
        for _ in range(world.decide.replay_arrivals(room.number, tick)):
            env.process(replay_session(env, world, room, f"{room.name}/R{n}"))
            n += 1
        yield env.timeout(tick)


def replay_session(env: simpy.Environment, world: World, room: Room, pid: str) -> Proc:
    """Play the recording (`World.replay_join`), stay, stop (`World.replay_leave`)."""
    stay = world.replay_join(room, pid)
    if stay is None:
        return
    yield env.timeout(stay)
    world.replay_leave(room, pid)


# --------------------------------------------------------------------------- lifecycle


def lifecycle(env: simpy.Environment, world: World, room: Room) -> Proc:
    """The space as written: live from the start, or scheduled and started by the host at
    ``rooms.starts_at``; ended by the host at ``rooms.ends_at``."""
    rooms = world.sc.rooms
    if rooms.starts_at is None:
        open_space(env, world, room)
    else:
        yield env.timeout(rooms.starts_at)
        if room.space.status is policy.SpaceStatus.SCHEDULED:
            world.emit(room, room.space.start(room.space.host))
            open_space(env, world, room)
    if rooms.ends_at is not None:
        yield env.timeout(max(rooms.ends_at - env.now, 0.0))
        world.emit(room, room.space.end(room.space.host))


def open_space(env: simpy.Environment, world: World, room: Room) -> None:
    """The space is live: seat the stage, start the talkers and the arrivals' clock."""
    assert room.started is not None
    if room.started.triggered or room.space.status is not _LIVE:
        return
    stage(env, world, room)
    room.started.succeed()


def stage(env: simpy.Environment, world: World, room: Room) -> None:
    """Seat the host, ``rooms.cohosts`` co-hosts and ``rooms.speakers`` speakers through
    the policy; the first ``speaking.active_speakers`` of them (host first) talk."""
    space = room.space
    host = space.host
    world.join_stage(room, host, "host")
    members = [host]
    for i in range(world.sc.rooms.cohosts):
        pid = f"{room.name}/cohost{i}"
        space.join(pid)
        world.join_stage(room, pid, "cohost")
        world.emit(room, space.add_cohost(host, pid))
        members.append(pid)
    for i in range(world.sc.rooms.speakers):
        pid = f"{room.name}/speaker{i}"
        space.join(pid)
        space.invite(host, pid)
        world.join_stage(room, pid, "speaker")
        world.emit(room, space.accept_invite(pid))  # speaker_granted, without a hand's wait
        members.append(pid)
    for pid in members[: world.sc.speaking.active_speakers]:
        env.process(talker(env, world, room, pid))


def talker(
    env: simpy.Environment, world: World, room: Room, pid: str, until: float = math.inf
) -> Proc:
    """Brady's on/off speaker (`behaviour.talk_phases`) while on stage, until `until`.

    Without DTX the speaker sends packets whenever they may be heard (live, on stage,
    unmuted); with DTX only during talk spurts. The world interrupts the process when
    the speaker's state changes: muted, they send nothing and wait to be unmuted (or for
    `until`); off stage or with the space ended, they stop.
    """
    sp = world.sc.speaking
    space = room.space
    phases = world.decide.talk_phases(room.number, pid, lambda: env.now)
    me = env.active_process
    assert me is not None
    room.talkers[pid] = me
    sending = False
    while env.now < until and room.talkers.get(pid) is me:  # a newer talker takes over
        if not space.may_be_heard(pid):
            if sending:
                world.talk(room, pid, -1)
                sending = False
            if space.status is not _LIVE or space.role_of(pid) not in _STAGE_ROLES:
                break
            with contextlib.suppress(simpy.Interrupt):  # muted: an unmute interrupts the wait
                yield env.timeout(until - env.now) if until < math.inf else env.event()
            continue
        talking, length = next(phases)
        if (talking or not sp.dtx) and not sending:
            world.talk(room, pid, +1)
            sending = True
        elif not talking and sp.dtx and sending:
            world.talk(room, pid, -1)
            sending = False
        began = env.now
        with contextlib.suppress(simpy.Interrupt):
            yield env.timeout(min(length, until - began))
        if talking and env.now > began:
            world.add(("talk_spurt", env.now, room.name, pid, "speaker", env.now - began, None))
    if sending:
        world.talk(room, pid, -1)
    if room.talkers.get(pid) is me:
        del room.talkers[pid]


def guest_speaker(env: simpy.Environment, world: World, room: Room, pid: str) -> Proc:
    """A granted or invited listener talks for a stint, then steps down (if still on stage)."""
    stint = world.decide.speaker_stint(room.number, pid)
    yield env.process(talker(env, world, room, pid, until=env.now + stint))
    if room.space.role_of(pid) is policy.Role.SPEAKER:
        world.emit(room, room.space.demote(pid, pid))


# --------------------------------------------------------------------------- audience


def audience(env: simpy.Environment, world: World, room: Room, desk: simpy.Resource) -> Proc:
    """Per tick while the space is live, Poisson counts of reactions, hand raises,
    reports and blocks over its listeners (`behaviour.events_in`), and the tick's
    event-stream load."""
    tick = world.sc.sim.tick
    decide = world.decide
    i = room.number
    space = room.space
    assert room.started is not None
    yield room.started
    while space.status is _LIVE:
        n = len(room.ids)
        k = 0
        if n:
            now = env.now
            k = decide.reactions(i, now, tick, n)
            if k:
                world.add(("reaction", env.now, room.name, "", "listener", float(k), None))
            for delay, who in decide.hand_raises(i, now, tick, n):
                env.process(hand_raise(env, world, room, delay, who))
            for delay, hint in decide.reports(i, now, tick, n):
                env.process(report_review(env, world, room, desk, delay, hint))
            for target in decide.blocks(i, now, tick, n):
                _personal_block(world, room, target)
            world.cut_clips(room, tick, n)
        world.event_tick(room, k, tick)
        yield env.timeout(tick)


def _someone(
    world: World, room: Room, other_than: str | None = None, hint: str | None = None
) -> str | None:
    """A random listener of the room (`behaviour.pick`), other than `other_than`; `hint`
    (a replayed participant) when it is a listener here."""
    if hint is not None and hint != other_than and hint in room.index:
        return hint
    ids = room.ids
    if not ids or (len(ids) == 1 and ids[0] == other_than):
        return None
    while True:
        pid = behaviour.pick(ids, world.draws)
        if pid != other_than:
            return pid


def _personal_block(world: World, room: Room, hint: str | None = None) -> None:
    """A listener blocks another (`hint`: who the replayed run's listener blocked)."""
    if hint is not None and hint in room.index:
        actor = _someone(world, room, other_than=hint)
        target = hint if actor else None
    else:
        actor = _someone(world, room)
        target = _someone(world, room, other_than=actor) if actor else None
    if actor and target:
        world.emit(room, room.space.block(actor, target))


def hand_raise(
    env: simpy.Environment, world: World, room: Room, delay: float, who: str | None = None
) -> Proc:
    """A listener (`who`, if replayed and present) asks to speak; the host decides after
    its response time, via the policy."""
    yield env.timeout(delay)
    pid = _someone(world, room, hint=who)
    space = room.space
    if pid is None:
        return
    out = space.raise_hand(pid)
    if not out.ok:
        return  # not a listener now, or the room's setting does not let them ask
    world.emit(room, out)
    raised = env.now
    decide = world.decide
    yield env.timeout(decide.hand_response_delay(room.number, pid))
    if pid not in space.hand_queue():
        return  # they left or lowered it meanwhile
    if decide.approves(room.number, pid):
        granted = space.approve(space.host, pid)
        if granted.ok:
            world.emit(room, granted, env.now - raised)
            env.process(guest_speaker(env, world, room, pid))
            return
    world.emit(room, space.decline(space.host, pid), env.now - raised)


def report_review(
    env: simpy.Environment,
    world: World,
    room: Room,
    desk: simpy.Resource,
    delay: float,
    hint: ReportHint = None,
) -> Proc:
    """A report waits for a moderator (an M/M/c queue) and is resolved through the policy;
    `hint` is what a replayed run recorded of it (about the space, its target)."""
    yield env.timeout(delay)
    decide = world.decide
    target_hint = hint[1] if hint is not None else None
    reporter = _someone(world, room, other_than=target_hint)
    if reporter is None:
        return
    about_space = decide.report_targets_space(room.number, hint)
    target = None if about_space else _someone(world, room, reporter, target_hint)
    if target is None and not about_space:
        return
    space = room.space
    filed = space.report(reporter, target)
    if not filed.ok:
        return
    world.emit(room, filed)
    t_filed = env.now
    with desk.request() as req:
        yield req
        queued = env.now - t_filed
        yield env.timeout(decide.review_time(room.number))
    action = policy.ModerationAction(decide.report_outcome(room.number, target is not None))
    role_before = space.role_of(target) if target is not None else None
    out = space.moderate(action, target)
    if not out.ok:
        return
    now = env.now
    for ev in out.events:
        attrs = {**ev.attrs, "action": action.value, "queue_wait": queued}
        value = now - t_filed if ev.kind == "report_resolved" else math.nan
        role = ev.role or (role_before if ev.participant == target else None)
        role_text = role.value if role is not None else ""
        world.add((ev.kind, now, room.name, ev.participant, role_text, value, json.dumps(attrs)))
    world.settle(room, out)


# --------------------------------------------------------------------------- the host


def _unmuted_stage(space: policy.Space) -> list[str]:
    return [p for p in space.cohosts() + space.speakers() if not space.is_muted(p)]


def host_action(
    env: simpy.Environment, world: World, room: Room, action: str, hint: str | None = None
) -> bool:
    """The host does `action` (a `behaviour.MODERATION_ACTIONS` or timeline action) now.

    Targets are drawn with `behaviour.pick` over the policy's own lists (`hint`, a
    replayed run's target, when it is among them: `Decisions.pick`); every change goes
    through the policy and its events are recorded. Returns whether anything changed
    (an action with no possible target, or refused, is skipped).
    """
    space = room.space
    host = space.host
    decide = world.decide
    mod = world.sc.moderation
    if action == "start":
        out = space.start(host)
        world.emit(room, out)
        if out.ok:
            open_space(env, world, room)
        return out.ok
    if action == "end":
        out = space.end(host)
    elif action == "host_leave":
        out = space.leave(host)
    elif action == "mute":
        target = decide.pick(_unmuted_stage(space), hint)
        if target is None:
            return False
        out = space.mute(host, target)
    elif action == "mute_all":
        out = space.mute_all(host)
    elif action == "unmute":  # every muted speaker unmutes themself
        done = False
        for pid in space.cohosts() + space.speakers():
            if space.is_muted(pid):
                out = space.unmute(pid, pid)
                world.emit(room, out)
                done = done or bool(out.events)
        return done
    elif action == "demote":
        target = decide.pick(space.speakers(), hint)
        if target is None:
            return False
        out = space.demote(host, target)
    elif action == "invite":
        target = decide.pick(space.listeners(), hint)
        if target is None:
            return False
        out = space.invite(host, target)
        world.emit(room, out)
        if not out.ok:
            return False
        if decide.accepts_invite(room.number, target):
            accepted = space.accept_invite(target)
            if accepted.ok:
                world.emit(room, accepted)
                env.process(guest_speaker(env, world, room, target))
                return True
        world.emit(room, space.decline_invite(target))
        return True
    elif action in ("remove", "block"):
        target = decide.pick(space.listeners(), hint)
        if target is None:
            return False
        out = space.remove(host, target) if action == "remove" else space.block(host, target)
    elif action == "cohost_handover":
        target = decide.pick(space.listeners(), hint)
        if target is None:
            return False
        cohosts = space.cohosts()
        if cohosts and len(cohosts) >= space.limits.max_cohosts:
            world.emit(room, space.remove_cohost(host, cohosts[0]))  # longest-serving
        out = space.add_cohost(host, target)
    else:
        raise ValueError(f"unknown host action {action!r}")
    world.emit(room, out)
    if out.ok and mod.unmute_after is not None:
        for ev in out.events:
            if ev.kind == "muted":
                delay = decide.unmute_delay(room.number, ev.participant)
                if delay is not None:
                    env.process(_unmute_later(env, world, room, ev.participant, delay))
    return out.ok


def _unmute_later(env: simpy.Environment, world: World, room: Room, pid: str, delay: float) -> Proc:
    """A speaker the host muted unmutes themself after a while (if still muted)."""
    yield env.timeout(delay)
    if room.space.is_muted(pid):
        world.emit(room, room.space.unmute(pid, pid))


def host_moderation(env: simpy.Environment, world: World, room: Room) -> Proc:
    """The host's own actions at the `moderation` rates, per tick while the space is live
    (`behaviour.moderation_due`), each at a uniform instant within the tick."""
    tick = world.sc.sim.tick
    space = room.space
    assert room.started is not None
    yield room.started
    while space.status is _LIVE:
        end = env.now + tick
        for at, action, hint in world.decide.moderation_due(room.number, env.now, tick):
            if at > env.now:
                yield env.timeout(at - env.now)
            if space.status is not _LIVE:
                return
            if host_action(env, world, room, action, hint):
                attrs = json.dumps({"action": action})
                world.add(
                    ("moderation_action", env.now, room.name, space.host, "host", math.nan, attrs)
                )
        yield env.timeout(end - env.now)


def timeline(env: simpy.Environment, world: World, room: Room) -> Proc:
    """The scenario's scripted actions, each at its run time (`Decisions.timeline`)."""
    for t, action, hint, at in world.decide.timeline(room.number):
        if t > env.now:
            yield env.timeout(t - env.now)
        ok = host_action(env, world, room, action, hint)
        attrs = json.dumps({"action": action, "at": at, "ok": ok})
        world.add(("timeline_action", env.now, room.name, room.space.host, "host", math.nan, attrs))


# --------------------------------------------------------------------------- monitor


def monitor(env: simpy.Environment, world: World) -> Proc:
    """Every tick: node CPU, concurrency and the sampled listeners' audio and events."""
    sc = world.sc
    tick = sc.sim.tick
    while True:
        yield env.timeout(tick)
        world.sample_tick(tick, record=env.now > sc.sim.warmup)

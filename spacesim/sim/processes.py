"""SimPy processes: plain generator functions taking ``env`` and what they act on.

Nothing here schedules an event per packet. Per listener there is one session
process; audience behaviour (reactions, hand raises, reports, blocks) is drawn per
room per tick as Poisson counts over the room's current listeners, which is exactly a
Poisson process while the count holds; audio is sampled for a few listeners a tick.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Generator, Iterator

import simpy

from spacesim import policy
from spacesim.scenario import (
    ConstantArrivals,
    FlashCrowdArrivals,
    PiecewiseArrivals,
    PoissonArrivals,
    RampArrivals,
    Scenario,
    Session,
)
from spacesim.sim.draws import Draws
from spacesim.sim.world import Room, World

__all__ = [
    "arrival_times",
    "arrivals",
    "audience",
    "hand_raise",
    "listener_session",
    "monitor",
    "report_review",
    "session_length",
    "stage",
    "talker",
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


def arrival_times(scenario: Scenario, draws: Draws) -> Iterator[float]:
    """Arrival instants for one room, in order, within the scenario's duration."""
    profile = scenario.arrivals
    horizon = scenario.duration
    if isinstance(profile, ConstantArrivals):
        if profile.rate <= 0:
            return iter(())
        gap = 1.0 / profile.rate
        return iter([k * gap for k in range(1, int(horizon / gap) + 1) if k * gap < horizon])
    background = _poisson_times(_segments(profile), horizon, draws)
    if not isinstance(profile, FlashCrowdArrivals):
        return background
    bursts: list[float] = []
    for b in profile.bursts:
        bursts.extend(b.at + draws.exp(b.over) for _ in range(b.size))
    bursts = sorted(t for t in bursts if t < horizon)
    return heapq.merge(background, bursts)


def session_length(session: Session, draws: Draws) -> float:
    """The scenario's session law (`Session.draw`) fed from the run's buffered draws."""
    return session.draw(draws.standard_exponential, draws.normal)


def arrivals(env: simpy.Environment, world: World, room: Room) -> Proc:
    """Listeners arrive per the scenario's profile; each gets a session process."""
    sc = world.sc
    draws = world.draws
    prefix = f"{room.name}/L"
    for n, t in enumerate(arrival_times(sc, draws)):
        if t > env.now:
            yield env.timeout(t - env.now)
        env.process(
            listener_session(env, world, room, f"{prefix}{n}", session_length(sc.session, draws))
        )


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


# --------------------------------------------------------------------------- stage


def stage(env: simpy.Environment, world: World, room: Room) -> Proc:
    """Seat the host, co-hosts and speakers through the policy, then start the talkers."""
    space = room.space
    host = space.host
    world.join_stage(room, host, "host")
    members = [host]
    for i in range(world.sc.rooms.cohosts):
        pid = f"{room.name}/cohost{i}"
        space.join(pid)
        world.emit(room, space.add_cohost(host, pid))
        world.join_stage(room, pid, "cohost")
        members.append(pid)
    for i in range(world.sc.rooms.speakers):
        pid = f"{room.name}/speaker{i}"
        space.join(pid)
        space.invite(host, pid)
        world.emit(room, space.accept_invite(pid))  # speaker_granted, without a hand's wait
        world.join_stage(room, pid, "speaker")
        members.append(pid)
    for pid in members[: world.sc.speaking.active_speakers]:
        env.process(talker(env, world, room, pid))
    yield env.timeout(0)


def talker(
    env: simpy.Environment, world: World, room: Room, pid: str, until: float = math.inf
) -> Proc:
    """Brady's on/off speaker: exponential talk spurts and pauses, started in steady state.

    Without DTX the speaker sends packets for as long as they are on stage and
    unmuted; with DTX only during talk spurts.
    """
    sp = world.sc.speaking
    draws = world.draws
    space = room.space
    talking = draws.uniform() < sp.activity
    if not sp.dtx:
        world.talk(room, pid, +1)
    while env.now < until and space.may_be_heard(pid):
        if talking:
            spurt = draws.exp(sp.talk_spurt)
            if sp.dtx:
                world.talk(room, pid, +1)
            yield env.timeout(spurt)
            if sp.dtx:
                world.talk(room, pid, -1)
            world.add(("talk_spurt", env.now, room.name, pid, "speaker", spurt, None))
        else:
            yield env.timeout(draws.exp(sp.pause))
        talking = not talking
    if not sp.dtx:
        world.talk(room, pid, -1)


# --------------------------------------------------------------------------- audience


def audience(env: simpy.Environment, world: World, room: Room, desk: simpy.Resource) -> Proc:
    """Per tick, Poisson counts of reactions, hand raises, reports and blocks."""
    sc = world.sc
    au = sc.audience
    tick = sc.sim.tick
    draws = world.draws
    while True:
        n = len(room.ids)
        if n:
            k = draws.poisson(n * au.reaction_rate * tick)
            if k:
                world.add(("reaction", env.now, room.name, "", "listener", float(k), None))
            for _ in range(draws.poisson(n * au.hand_raise_rate * tick)):
                env.process(hand_raise(env, world, room, draws.uniform() * tick))
            for _ in range(draws.poisson(n * au.report_rate * tick)):
                env.process(report_review(env, world, room, desk, draws.uniform() * tick))
            for _ in range(draws.poisson(n * au.block_rate * tick)):
                _personal_block(world, room)
        yield env.timeout(tick)


def _someone(world: World, room: Room, other_than: str | None = None) -> str | None:
    ids = room.ids
    if not ids or (len(ids) == 1 and ids[0] == other_than):
        return None
    while True:
        pid = ids[world.draws.index(len(ids))]
        if pid != other_than:
            return pid


def _personal_block(world: World, room: Room) -> None:
    actor = _someone(world, room)
    target = _someone(world, room, other_than=actor) if actor else None
    if actor and target:
        world.emit(room, room.space.block(actor, target))


def hand_raise(env: simpy.Environment, world: World, room: Room, delay: float) -> Proc:
    """A listener asks to speak; the host decides after its response time, via the policy."""
    yield env.timeout(delay)
    pid = _someone(world, room)
    space = room.space
    if pid is None:
        return
    out = space.raise_hand(pid)
    if not out.ok:
        return  # not a listener now, or the room's setting does not let them ask
    world.emit(room, out)
    raised = env.now
    au = world.sc.audience
    draws = world.draws
    yield env.timeout(draws.exp(au.host_response_time))
    if pid not in space.hand_queue():
        return  # they left or lowered it meanwhile
    if draws.uniform() < au.approval:
        granted = space.approve(space.host, pid)
        if granted.ok:
            world.emit(room, granted, env.now - raised)
            env.process(guest_speaker(env, world, room, pid))
            return
    world.emit(room, space.decline(space.host, pid), env.now - raised)


def guest_speaker(env: simpy.Environment, world: World, room: Room, pid: str) -> Proc:
    """A granted listener talks for a stint, then steps down (if still on stage)."""
    stint = world.draws.exp(world.sc.audience.speaker_stint)
    yield env.process(talker(env, world, room, pid, until=env.now + stint))
    if room.space.role_of(pid) is policy.Role.SPEAKER:
        world.emit(room, room.space.demote(pid, pid))


def report_review(
    env: simpy.Environment, world: World, room: Room, desk: simpy.Resource, delay: float
) -> Proc:
    """A report waits for a moderator (an M/M/c queue) and is resolved through the policy."""
    yield env.timeout(delay)
    au = world.sc.audience
    draws = world.draws
    reporter = _someone(world, room)
    if reporter is None:
        return
    about_space = draws.uniform() < au.space_report_share
    target = None if about_space else _someone(world, room, other_than=reporter)
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
        yield env.timeout(draws.exp(au.review_time))
    action = policy.ModerationAction.DISMISS
    if target is not None:
        u = draws.uniform()
        if u < au.outcomes.remove:
            action = policy.ModerationAction.REMOVE
        elif u < au.outcomes.remove + au.outcomes.block:
            action = policy.ModerationAction.BLOCK
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
    world.apply_removals(room, out)


# --------------------------------------------------------------------------- monitor


def monitor(env: simpy.Environment, world: World) -> Proc:
    """Every tick: node CPU, concurrency and the sampled listeners' audio."""
    sc = world.sc
    tick = sc.sim.tick
    while True:
        yield env.timeout(tick)
        world.sample_tick(tick, record=env.now > sc.sim.warmup)

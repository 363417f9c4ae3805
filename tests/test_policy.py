"""Tests for spacesim.policy: every transition, every refusal, role table, random walk."""

import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from spacesim import policy
from spacesim.policy import (
    EVENT_KINDS,
    MAX_COHOSTS,
    MAX_SPEAKERS,
    REFUSAL_CODES,
    Event,
    Limits,
    ModerationAction,
    Outcome,
    Role,
    Space,
    SpaceStatus,
    WhoMaySpeak,
)

H = "h"
SID = "sp"

# --------------------------------------------------------------------------- helpers


def make(
    *,
    cohosts: Iterable[str] = (),
    speakers: Iterable[str] = (),
    listeners: Iterable[str] = (),
    hands: Iterable[str] = (),
    limits: Limits = Limits(),  # noqa: B008 - frozen, immutable
    who: WhoMaySpeak = WhoMaySpeak.EVERYONE,
    follows: Iterable[str] = (),
    blocked: Iterable[str] = (),
) -> Space:
    """A LIVE space with host ``h`` and the given people, built through transitions."""
    cohosts, speakers, listeners = tuple(cohosts), tuple(speakers), tuple(listeners)
    s = Space(SID, H, limits=limits, who_may_speak=who, host_follows=follows, blocked=blocked)
    for u in (*cohosts, *speakers, *listeners):
        assert s.join(u)
    for u in cohosts:
        assert s.add_cohost(H, u)
    for u in speakers:
        assert s.invite(H, u)
        assert s.accept_invite(u)
    for u in hands:
        assert s.raise_hand(u)
    return s


def std() -> Space:
    """Host h, co-hosts c1 c2, speakers s1 s2, listeners l1 l2 l3; l2 has a raised hand."""
    return make(
        cohosts=("c1", "c2"),
        speakers=("s1", "s2"),
        listeners=("l1", "l2", "l3"),
        hands=("l2",),
    )


def sched() -> Space:
    return Space(SID, H, status=SpaceStatus.SCHEDULED)


def ended() -> Space:
    s = std()
    assert s.end(H)
    return s


def snap(s: Space) -> tuple[Any, ...]:
    """Every observable piece of state, order included."""
    return (
        s.status,
        s.who_may_speak,
        tuple(s.participants.items()),
        s.stage(),
        s.listeners(),
        s.hand_queue(),
        tuple(s.pending_invites().items()),
        frozenset(u for u in s.participants if s.is_muted(u)),
        s.blocked,
        s.removed,
        s.host_follows,
        s.ever_joined,
        s.n_listeners,
        s.n_speakers,
    )


def kinds(out: Outcome) -> list[str]:
    return [e.kind for e in out.events]


def assert_refused(s: Space, call: Callable[[Space], Outcome], code: str) -> None:
    before = snap(s)
    out = call(s)
    assert not out
    assert out.ok is False
    assert out.code == code, (out.code, out.reason)
    assert out.code in REFUSAL_CODES
    assert out.reason
    assert out.events == ()
    assert snap(s) == before


def with_(setup: Callable[[], Space], *steps: Callable[[Space], Outcome]) -> Callable[[], Space]:
    """Setup factory followed by extra successful steps."""

    def build() -> Space:
        s = setup()
        for step in steps:
            assert step(s)
        return s

    return build


# --------------------------------------------------------------------------- refusals

Call = Callable[[Space], Outcome]
R: list[Any] = []


def refusal(name: str, setup: Callable[[], Space], call: Call, code: str) -> None:
    R.append(pytest.param(setup, call, code, id=f"{name}-{code}"))


# start
refusal("start", ended, lambda s: s.start(H), "space_ended")
refusal("start", sched, lambda s: s.start("x"), "not_present")
refusal("start", std, lambda s: s.start("l1"), "not_allowed")
refusal("start", std, lambda s: s.start("c1"), "not_allowed")
refusal("start", std, lambda s: s.start(H), "already_live")
# end
refusal("end", ended, lambda s: s.end(H), "space_ended")
refusal("end", std, lambda s: s.end("x"), "not_present")
refusal("end", std, lambda s: s.end("c1"), "not_allowed")
# join
refusal("join", sched, lambda s: s.join("u"), "not_started")
refusal("join", ended, lambda s: s.join("u"), "space_ended")
refusal("join", lambda: make(blocked=("b",)), lambda s: s.join("b"), "blocked")
refusal("join", with_(std, lambda s: s.remove(H, "l1")), lambda s: s.join("l1"), "removed")
refusal("join", std, lambda s: s.join("l1"), "already_present")
refusal("join", std, lambda s: s.join(H), "already_present")
refusal(
    "join",
    lambda: make(listeners=("l1",), limits=Limits(listener_cap=1)),
    lambda s: s.join("u"),
    "room_full",
)
refusal("join", lambda: make(limits=Limits(listener_cap=0)), lambda s: s.join("u"), "room_full")
# leave
refusal("leave", sched, lambda s: s.leave(H), "not_started")
refusal("leave", ended, lambda s: s.leave("l1"), "space_ended")
refusal("leave", std, lambda s: s.leave("x"), "not_present")
# raise_hand
refusal("raise_hand", sched, lambda s: s.raise_hand(H), "not_started")
refusal("raise_hand", ended, lambda s: s.raise_hand("l1"), "space_ended")
refusal("raise_hand", std, lambda s: s.raise_hand("x"), "not_present")
refusal("raise_hand", std, lambda s: s.raise_hand("s1"), "not_a_listener")
refusal("raise_hand", std, lambda s: s.raise_hand("c1"), "not_a_listener")
refusal(
    "raise_hand",
    lambda: make(listeners=("l1",), who=WhoMaySpeak.INVITED, follows=("l1",)),
    lambda s: s.raise_hand("l1"),
    "speaking_restricted",
)
refusal(
    "raise_hand",
    lambda: make(listeners=("l1",), who=WhoMaySpeak.FOLLOWED, follows=("other",)),
    lambda s: s.raise_hand("l1"),
    "speaking_restricted",
)
refusal("raise_hand", std, lambda s: s.raise_hand("l2"), "hand_already_raised")
# lower_hand
refusal("lower_hand", sched, lambda s: s.lower_hand(H), "not_started")
refusal("lower_hand", ended, lambda s: s.lower_hand("l2"), "space_ended")
refusal("lower_hand", std, lambda s: s.lower_hand("x"), "not_present")
refusal("lower_hand", std, lambda s: s.lower_hand("l1"), "no_raised_hand")
# approve
refusal("approve", sched, lambda s: s.approve(H, "l2"), "not_started")
refusal("approve", ended, lambda s: s.approve(H, "l2"), "space_ended")
refusal("approve", std, lambda s: s.approve("x", "l2"), "not_present")
refusal("approve", std, lambda s: s.approve("s1", "l2"), "not_allowed")
refusal("approve", std, lambda s: s.approve("l1", "l2"), "not_allowed")
refusal("approve", std, lambda s: s.approve(H, "l1"), "no_raised_hand")
refusal("approve", std, lambda s: s.approve(H, "zz"), "no_raised_hand")
refusal(
    "approve",
    lambda: make(speakers=("s1",), listeners=("l1",), hands=("l1",), limits=Limits(max_speakers=1)),
    lambda s: s.approve(H, "l1"),
    "stage_full",
)
# decline
refusal("decline", sched, lambda s: s.decline(H, "l2"), "not_started")
refusal("decline", ended, lambda s: s.decline(H, "l2"), "space_ended")
refusal("decline", std, lambda s: s.decline("x", "l2"), "not_present")
refusal("decline", std, lambda s: s.decline("s1", "l2"), "not_allowed")
refusal("decline", std, lambda s: s.decline(H, "l1"), "no_raised_hand")
# invite
refusal("invite", sched, lambda s: s.invite(H, "l1"), "not_started")
refusal("invite", ended, lambda s: s.invite(H, "l1"), "space_ended")
refusal("invite", std, lambda s: s.invite("x", "l1"), "not_present")
refusal("invite", std, lambda s: s.invite("s1", "l1"), "not_allowed")
refusal("invite", std, lambda s: s.invite("l2", "l1"), "not_allowed")
refusal("invite", std, lambda s: s.invite(H, H), "self_target")
refusal("invite", std, lambda s: s.invite("c1", "c1"), "self_target")
refusal("invite", std, lambda s: s.invite(H, "zz"), "not_present")
refusal("invite", std, lambda s: s.invite(H, "s1"), "not_a_listener")
refusal("invite", std, lambda s: s.invite("c1", "c2"), "not_a_listener")
# accept_invite
refusal("accept_invite", sched, lambda s: s.accept_invite(H), "not_started")
refusal(
    "accept_invite",
    with_(std, lambda s: s.invite(H, "l1"), lambda s: s.end(H)),
    lambda s: s.accept_invite("l1"),
    "space_ended",
)
refusal("accept_invite", std, lambda s: s.accept_invite("x"), "not_present")
refusal("accept_invite", std, lambda s: s.accept_invite("l1"), "no_invite")
refusal(
    "accept_invite",
    with_(
        lambda: make(speakers=("s1",), listeners=("l1",), limits=Limits(max_speakers=1)),
        lambda s: s.invite(H, "l1"),
    ),
    lambda s: s.accept_invite("l1"),
    "stage_full",
)
# decline_invite
refusal("decline_invite", sched, lambda s: s.decline_invite(H), "not_started")
refusal("decline_invite", ended, lambda s: s.decline_invite("l1"), "space_ended")
refusal("decline_invite", std, lambda s: s.decline_invite("x"), "not_present")
refusal("decline_invite", std, lambda s: s.decline_invite("l1"), "no_invite")
# demote
refusal("demote", sched, lambda s: s.demote(H, "x"), "not_started")
refusal("demote", ended, lambda s: s.demote(H, "s1"), "space_ended")
refusal("demote", std, lambda s: s.demote("x", "s1"), "not_present")
refusal("demote", std, lambda s: s.demote(H, "zz"), "not_present")
refusal("demote", std, lambda s: s.demote(H, "l1"), "not_on_stage")
refusal("demote", std, lambda s: s.demote("l1", "l1"), "not_on_stage")
refusal("demote", std, lambda s: s.demote(H, "c1"), "bad_target")
refusal("demote", std, lambda s: s.demote("c1", H), "bad_target")
refusal("demote", std, lambda s: s.demote("s1", "s2"), "not_allowed")
refusal("demote", std, lambda s: s.demote("l1", "s1"), "not_allowed")
# add_cohost
refusal("add_cohost", sched, lambda s: s.add_cohost(H, "x"), "not_started")
refusal("add_cohost", ended, lambda s: s.add_cohost(H, "l1"), "space_ended")
refusal("add_cohost", std, lambda s: s.add_cohost("x", "l1"), "not_present")
refusal("add_cohost", std, lambda s: s.add_cohost("c1", "l1"), "not_allowed")
refusal("add_cohost", std, lambda s: s.add_cohost("s1", "l1"), "not_allowed")
refusal("add_cohost", std, lambda s: s.add_cohost(H, H), "self_target")
refusal(
    "add_cohost", lambda: make(listeners=("l1",)), lambda s: s.add_cohost(H, "zz"), "not_present"
)
refusal("add_cohost", lambda: make(cohosts=("c1",)), lambda s: s.add_cohost(H, "c1"), "bad_target")
refusal("add_cohost", std, lambda s: s.add_cohost(H, "l1"), "cohosts_full")
refusal(
    "add_cohost",
    lambda: make(listeners=("l1",), limits=Limits(max_cohosts=0)),
    lambda s: s.add_cohost(H, "l1"),
    "cohosts_full",
)
# remove_cohost
refusal("remove_cohost", sched, lambda s: s.remove_cohost(H, "x"), "not_started")
refusal("remove_cohost", ended, lambda s: s.remove_cohost(H, "c1"), "space_ended")
refusal("remove_cohost", std, lambda s: s.remove_cohost("x", "c1"), "not_present")
refusal("remove_cohost", std, lambda s: s.remove_cohost(H, "zz"), "not_present")
refusal("remove_cohost", std, lambda s: s.remove_cohost(H, "s1"), "bad_target")
refusal("remove_cohost", std, lambda s: s.remove_cohost(H, H), "bad_target")
refusal("remove_cohost", std, lambda s: s.remove_cohost("c1", "c2"), "not_allowed")
refusal("remove_cohost", std, lambda s: s.remove_cohost("s1", "c1"), "not_allowed")
# mute
refusal("mute", sched, lambda s: s.mute(H, H), "not_started")
refusal("mute", ended, lambda s: s.mute(H, "s1"), "space_ended")
refusal("mute", std, lambda s: s.mute("x", "s1"), "not_present")
refusal("mute", std, lambda s: s.mute(H, "zz"), "not_present")
refusal("mute", std, lambda s: s.mute(H, "l1"), "not_on_stage")
refusal("mute", std, lambda s: s.mute("l1", "l1"), "not_on_stage")
refusal("mute", std, lambda s: s.mute("s1", "s2"), "not_allowed")
refusal("mute", std, lambda s: s.mute("s1", "c1"), "not_allowed")
refusal("mute", std, lambda s: s.mute("l1", "s1"), "not_allowed")
refusal("mute", std, lambda s: s.mute("c1", H), "not_allowed")
refusal("mute", std, lambda s: s.mute("c1", "c2"), "not_allowed")
# unmute
refusal("unmute", sched, lambda s: s.unmute(H, H), "not_started")
refusal("unmute", ended, lambda s: s.unmute("s1", "s1"), "space_ended")
refusal("unmute", std, lambda s: s.unmute("x", "x"), "not_present")
refusal("unmute", with_(std, lambda s: s.mute(H, "s1")), lambda s: s.unmute(H, "s1"), "not_allowed")
refusal(
    "unmute",
    with_(std, lambda s: s.mute("c1", "s1")),
    lambda s: s.unmute("c1", "s1"),
    "not_allowed",
)
refusal("unmute", std, lambda s: s.unmute("l1", "l1"), "not_on_stage")
# mute_all
refusal("mute_all", sched, lambda s: s.mute_all(H), "not_started")
refusal("mute_all", ended, lambda s: s.mute_all(H), "space_ended")
refusal("mute_all", std, lambda s: s.mute_all("x"), "not_present")
refusal("mute_all", std, lambda s: s.mute_all("s1"), "not_allowed")
refusal("mute_all", std, lambda s: s.mute_all("l1"), "not_allowed")
# remove
refusal("remove", sched, lambda s: s.remove(H, "x"), "not_started")
refusal("remove", ended, lambda s: s.remove(H, "l1"), "space_ended")
refusal("remove", std, lambda s: s.remove("x", "l1"), "not_present")
refusal("remove", std, lambda s: s.remove(H, "zz"), "not_present")
refusal("remove", std, lambda s: s.remove("s1", "l1"), "not_allowed")
refusal("remove", std, lambda s: s.remove("l1", "l2"), "not_allowed")
refusal("remove", std, lambda s: s.remove("c1", H), "not_allowed")
refusal("remove", std, lambda s: s.remove("c1", "c2"), "not_allowed")
refusal("remove", std, lambda s: s.remove(H, H), "self_target")
refusal("remove", std, lambda s: s.remove("c1", "c1"), "self_target")
# block
refusal("block", sched, lambda s: s.block(H, "x"), "not_started")
refusal("block", ended, lambda s: s.block(H, "l1"), "space_ended")
refusal("block", std, lambda s: s.block("x", "l1"), "not_present")
refusal("block", std, lambda s: s.block("l1", "l1"), "self_target")
refusal("block", std, lambda s: s.block(H, H), "self_target")
# report
refusal("report", sched, lambda s: s.report(H, None), "not_started")
refusal("report", ended, lambda s: s.report("l1", None), "space_ended")
refusal("report", std, lambda s: s.report("x", "l1"), "not_present")
refusal("report", std, lambda s: s.report("l1", "l1"), "self_target")
refusal("report", std, lambda s: s.report("l1", "never"), "bad_target")
# moderate
refusal("moderate", ended, lambda s: s.moderate(ModerationAction.DISMISS, None), "space_ended")
refusal("moderate", ended, lambda s: s.moderate(ModerationAction.END, None), "space_ended")
refusal("moderate", std, lambda s: s.moderate(ModerationAction.REMOVE, None), "bad_target")
refusal("moderate", std, lambda s: s.moderate(ModerationAction.BLOCK, None), "bad_target")
# set_who_may_speak
refusal(
    "set_who_may_speak",
    ended,
    lambda s: s.set_who_may_speak(H, WhoMaySpeak.INVITED),
    "space_ended",
)
refusal(
    "set_who_may_speak",
    std,
    lambda s: s.set_who_may_speak("x", WhoMaySpeak.INVITED),
    "not_present",
)
refusal(
    "set_who_may_speak",
    std,
    lambda s: s.set_who_may_speak("c1", WhoMaySpeak.INVITED),
    "not_allowed",
)
refusal(
    "set_who_may_speak",
    std,
    lambda s: s.set_who_may_speak("l1", WhoMaySpeak.INVITED),
    "not_allowed",
)


@pytest.mark.parametrize(("setup", "call", "code"), R)
def test_refusal_changes_nothing(setup: Callable[[], Space], call: Call, code: str) -> None:
    assert_refused(setup(), call, code)


def test_every_refusal_code_is_exercised() -> None:
    assert {p.values[2] for p in R} == REFUSAL_CODES


# --------------------------------------------------------------------------- construction


def test_construction_seats_host_unmuted_on_stage() -> None:
    s = Space(SID, H)
    assert s.space_id == SID and s.host == H
    assert s.status is SpaceStatus.LIVE
    assert s.who_may_speak is WhoMaySpeak.EVERYONE
    assert s.limits == Limits(MAX_COHOSTS, MAX_SPEAKERS, None)
    assert s.role_of(H) is Role.HOST
    assert dict(s.participants) == {H: Role.HOST}
    assert s.stage() == (H,)
    assert s.cohosts() == s.speakers() == s.listeners() == s.hand_queue() == ()
    assert dict(s.pending_invites()) == {}
    assert not s.is_muted(H) and s.may_be_heard(H)
    assert s.n_listeners == 0 and s.n_speakers == 0
    assert s.ever_joined == {H}
    assert s.blocked == s.removed == s.host_follows == frozenset()


def test_participants_view_is_read_only() -> None:
    s = Space(SID, H)
    with pytest.raises(TypeError):
        s.participants["x"] = Role.HOST  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_cohosts": -1},
        {"max_cohosts": 3},
        {"max_speakers": -1},
        {"max_speakers": 11},
        {"listener_cap": -1},
    ],
)
def test_limits_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_limits_bounds_accepted() -> None:
    assert Limits(0, 0, 0) == Limits(max_cohosts=0, max_speakers=0, listener_cap=0)
    assert Limits(2, 10, None).max_speakers == 10


def test_space_construction_validation() -> None:
    with pytest.raises(ValueError):
        Space(SID, H, status=SpaceStatus.ENDED)
    with pytest.raises(ValueError):
        Space(SID, H, blocked=[H])
    with pytest.raises(ValueError):
        Space("", H)
    with pytest.raises(ValueError):
        Space(SID, "")


def test_outcome_and_event_contracts() -> None:
    assert Outcome(ok=True)
    assert not Outcome(ok=False, reason="r", code="not_allowed")
    with pytest.raises(ValueError):
        Outcome(ok=True, code="x")
    with pytest.raises(ValueError):
        Outcome(ok=False)
    with pytest.raises(ValueError):
        Outcome(ok=False, reason="r", code="c", events=(Event("muted", "u"),))
    e = Event("report_filed", "u", attrs={"reason": "spam"})
    assert e.attrs == {"reason": "spam"}
    with pytest.raises(TypeError):
        e.attrs["reason"] = "x"  # type: ignore[index]
    assert Event("muted", "u").attrs == {}


# --------------------------------------------------------------------------- lifecycle


def test_start_from_scheduled() -> None:
    s = sched()
    assert s.role_of(H) is Role.HOST
    assert not s.may_be_heard(H)
    out = s.start(H)
    assert out.events == (Event("space_started", SID, actor=H),)
    assert s.status is SpaceStatus.LIVE
    assert s.may_be_heard(H)
    assert s.join("u")


def test_end_clears_everyone() -> None:
    s = std()
    assert s.invite(H, "l1")
    assert s.mute(H, "s1")
    out = s.end(H)
    assert out.events == (Event("space_ended", SID, actor=H, attrs={"reason": "host_ended"}),)
    assert s.status is SpaceStatus.ENDED
    assert dict(s.participants) == {}
    assert s.hand_queue() == () and dict(s.pending_invites()) == {}
    assert not s.is_muted("s1")
    assert not any(s.may_be_heard(u) for u in (H, "c1", "s1"))
    assert "l1" in s.ever_joined


def test_end_cancels_scheduled_space() -> None:
    s = sched()
    assert kinds(s.end(H)) == ["space_ended"]
    assert s.status is SpaceStatus.ENDED
    assert_refused(s, lambda s: s.start(H), "space_ended")


def test_set_who_may_speak_allowed_while_scheduled() -> None:
    s = sched()
    assert kinds(s.set_who_may_speak(H, WhoMaySpeak.INVITED)) == ["speak_setting_changed"]


def test_join() -> None:
    s = make()
    out = s.join("u")
    assert out.events == (Event("participant_joined", "u", role=Role.LISTENER),)
    assert s.role_of("u") is Role.LISTENER
    assert s.listeners() == ("u",) and s.n_listeners == 1
    assert "u" in s.ever_joined
    assert not s.may_be_heard("u")


def test_listener_cap_counts_only_listeners() -> None:
    s = make(listeners=("a",), limits=Limits(listener_cap=1))
    assert_refused(s, lambda s: s.join("b"), "room_full")
    assert s.invite(H, "a") and s.accept_invite("a")
    assert s.join("b")


def test_leave_clears_hand_invite_and_mute() -> None:
    s = std()
    assert s.invite(H, "l1")
    out = s.leave("l2")
    assert out.events == (Event("participant_left", "l2"),)
    assert s.role_of("l2") is None and s.hand_queue() == ()
    assert s.leave("l1")
    assert dict(s.pending_invites()) == {}
    assert s.mute("s1", "s1")
    assert s.leave("s1")
    assert not s.is_muted("s1")
    # A user who left may come back (leaving is not removal) and starts fresh.
    assert s.join("s1")
    assert s.role_of("s1") is Role.LISTENER and not s.is_muted("s1")
    assert s.hand_queue() == ()


def test_host_leaving_ends_space() -> None:
    s = std()
    out = s.leave(H)
    assert out.events == (
        Event("participant_left", H),
        Event("space_ended", SID, actor=H, attrs={"reason": "host_left"}),
    )
    assert s.status is SpaceStatus.ENDED
    assert dict(s.participants) == {}


# --------------------------------------------------------------------------- hands


def test_raise_and_lower_hand_fifo() -> None:
    s = make(listeners=("a", "b", "c"))
    for u in ("b", "a", "c"):
        assert s.raise_hand(u).events == (Event("hand_raised", u, role=Role.LISTENER),)
    assert s.hand_queue() == ("b", "a", "c")
    assert s.lower_hand("a").events == (Event("hand_lowered", "a", role=Role.LISTENER),)
    assert s.hand_queue() == ("b", "c")
    assert s.raise_hand("a")
    assert s.hand_queue() == ("b", "c", "a")


def test_followed_setting_and_follow_setters() -> None:
    s = make(listeners=("a", "b"), who=WhoMaySpeak.FOLLOWED, follows=("a",))
    assert s.raise_hand("a")
    assert_refused(s, lambda s: s.raise_hand("b"), "speaking_restricted")
    s.follow("b")
    assert "b" in s.host_follows
    assert s.raise_hand("b")
    s.unfollow("a")
    assert "a" not in s.host_follows
    assert s.hand_queue() == ("a", "b")  # plain setter: existing hands are kept
    s.unfollow("nobody")  # no error


def test_approve() -> None:
    s = std()
    assert s.invite("c1", "l2")  # invited AND hand raised: both cleared by approval
    out = s.approve("c1", "l2")
    assert out.events == (Event("speaker_granted", "l2", actor="c1", role=Role.SPEAKER),)
    assert s.role_of("l2") is Role.SPEAKER
    assert s.speakers() == ("s1", "s2", "l2")
    assert s.hand_queue() == () and "l2" not in s.pending_invites()
    assert not s.is_muted("l2") and s.may_be_heard("l2")


def test_approve_fills_exactly_max_speakers() -> None:
    users = [f"u{i}" for i in range(MAX_SPEAKERS + 1)]
    s = make(listeners=users, hands=users)
    for u in users[:-1]:
        assert s.approve(H, u)
    assert s.n_speakers == MAX_SPEAKERS
    assert len(s.stage()) == 1 + MAX_SPEAKERS
    assert_refused(s, lambda s: s.approve(H, users[-1]), "stage_full")


def test_decline() -> None:
    s = std()
    out = s.decline(H, "l2")
    assert out.events == (Event("hand_declined", "l2", actor=H, role=Role.LISTENER),)
    assert s.hand_queue() == () and s.role_of("l2") is Role.LISTENER


# --------------------------------------------------------------------------- invites


def test_invite_and_accept() -> None:
    s = make(cohosts=("c1",), listeners=("a",), who=WhoMaySpeak.INVITED)
    out = s.invite("c1", "a")
    assert out.events == (Event("speaker_invited", "a", actor="c1", role=Role.LISTENER),)
    assert dict(s.pending_invites()) == {"a": "c1"}
    again = s.invite(H, "a")
    assert again.ok and again.events == ()
    assert dict(s.pending_invites()) == {"a": "c1"}
    out = s.accept_invite("a")
    assert out.events == (Event("speaker_granted", "a", actor="c1", role=Role.SPEAKER),)
    assert s.role_of("a") is Role.SPEAKER and s.may_be_heard("a")
    assert dict(s.pending_invites()) == {}


def test_invite_allowed_when_stage_full_and_with_raised_hand() -> None:
    s = make(speakers=("s1",), listeners=("a",), hands=("a",), limits=Limits(max_speakers=1))
    assert s.invite(H, "a")
    assert s.hand_queue() == ("a",)
    assert s.demote("s1", "s1")
    assert s.accept_invite("a")
    assert s.hand_queue() == ()


def test_decline_invite() -> None:
    s = make(listeners=("a",))
    assert s.invite(H, "a")
    out = s.decline_invite("a")
    assert out.events == (Event("invite_declined", "a", role=Role.LISTENER, attrs={"inviter": H}),)
    assert dict(s.pending_invites()) == {}
    assert s.role_of("a") is Role.LISTENER


# --------------------------------------------------------------------------- stage


def test_demote_by_moderator_and_self() -> None:
    s = std()
    assert s.mute(H, "s1")
    out = s.demote("c1", "s1")
    assert out.events == (Event("speaker_revoked", "s1", actor="c1", role=Role.LISTENER),)
    assert s.role_of("s1") is Role.LISTENER and not s.is_muted("s1")
    out = s.demote("s2", "s2")
    assert out.events == (Event("speaker_revoked", "s2", role=Role.LISTENER),)
    assert s.speakers() == ()
    assert s.listeners()[-2:] == ("s1", "s2")


def test_add_cohost_from_speaker_frees_seat() -> None:
    s = make(speakers=("s1",), listeners=("l1",), hands=("l1",), limits=Limits(max_speakers=1))
    out = s.add_cohost(H, "s1")
    assert out.events == (Event("cohost_added", "s1", actor=H, role=Role.COHOST),)
    assert s.cohosts() == ("s1",) and s.n_speakers == 0
    assert s.approve("s1", "l1")
    assert s.stage() == (H, "s1", "l1")


def test_add_cohost_from_listener_clears_hand_and_invite() -> None:
    s = make(listeners=("a",), hands=("a",))
    assert s.invite(H, "a")
    assert s.add_cohost(H, "a")
    assert s.role_of("a") is Role.COHOST and s.may_be_heard("a")
    assert s.hand_queue() == () and dict(s.pending_invites()) == {}


def test_add_cohost_keeps_mute_state_of_speaker() -> None:
    s = make(speakers=("s1",))
    assert s.mute("s1", "s1")
    assert s.add_cohost(H, "s1")
    assert s.is_muted("s1")


def test_remove_cohost_to_speaker_or_listener() -> None:
    s = make(cohosts=("c1", "c2"), speakers=("s1",), limits=Limits(max_speakers=1))
    assert s.mute(H, "c1")
    out = s.remove_cohost(H, "c1")  # no free seat -> listener, mute cleared
    assert out.events == (Event("cohost_removed", "c1", actor=H, role=Role.LISTENER),)
    assert s.role_of("c1") is Role.LISTENER and not s.is_muted("c1")
    assert s.demote("s1", "s1")
    assert s.mute("c2", "c2")
    out = s.remove_cohost("c2", "c2")  # self step-down, seat free -> speaker, mute kept
    assert out.events == (Event("cohost_removed", "c2", role=Role.SPEAKER),)
    assert s.role_of("c2") is Role.SPEAKER and s.is_muted("c2")
    assert s.cohosts() == ()


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize(
    ("actor", "target"),
    [
        ("s1", "s1"),
        ("c1", "c1"),
        (H, H),
        (H, "c1"),
        (H, "s1"),
        ("c1", "s1"),
    ],
)
def test_mute_allowed(actor: str, target: str) -> None:
    s = std()
    out = s.mute(actor, target)
    by = None if actor == target else actor
    assert out.events == (Event("muted", target, actor=by, role=s.role_of(target)),)
    assert s.is_muted(target) and not s.may_be_heard(target)
    again = s.mute(actor, target)
    assert again.ok and again.events == ()


def test_unmute_self_only() -> None:
    s = std()
    assert s.mute(H, "s1")
    out = s.unmute("s1", "s1")
    assert out.events == (Event("unmuted", "s1", role=Role.SPEAKER),)
    assert s.may_be_heard("s1")
    again = s.unmute("s1", "s1")
    assert again.ok and again.events == ()


def test_mute_all_by_host_and_cohost() -> None:
    s = std()
    assert s.mute("s2", "s2")
    out = s.mute_all("c1")
    assert out.events == (
        Event("muted", "c2", actor="c1", role=Role.COHOST),
        Event("muted", "s1", actor="c1", role=Role.SPEAKER),
    )
    assert not s.is_muted(H) and not s.is_muted("c1")
    out = s.mute_all(H)
    assert out.events == (Event("muted", "c1", actor=H, role=Role.COHOST),)
    assert s.mute_all(H).events == ()
    assert [u for u in s.stage() if s.may_be_heard(u)] == [H]


def test_may_be_heard_only_for_live_unmuted_stage() -> None:
    s = std()
    assert all(s.may_be_heard(u) for u in s.stage())
    assert not any(s.may_be_heard(u) for u in s.listeners())
    assert not s.may_be_heard("stranger")


# --------------------------------------------------------------------------- safety


def test_remove_by_host_and_cohost() -> None:
    s = std()
    assert s.invite(H, "l1")
    out = s.remove("c1", "l1")
    assert out.events == (Event("removed", "l1", actor="c1", attrs={"reason": "removed"}),)
    assert s.role_of("l1") is None and "l1" in s.removed
    assert dict(s.pending_invites()) == {}
    assert s.remove("c1", "s1")
    assert s.remove(H, "c2")
    assert s.cohosts() == ("c1",)
    assert_refused(s, lambda s: s.join("c2"), "removed")


def test_moderator_block_removes_and_bars() -> None:
    s = std()
    out = s.block("c1", "l2")
    assert out.events == (
        Event("blocked", "l2", actor="c1", role=Role.LISTENER, attrs={"scope": "space"}),
        Event("removed", "l2", actor="c1", attrs={"reason": "blocked"}),
    )
    assert "l2" in s.blocked and "l2" in s.removed and s.hand_queue() == ()
    assert_refused(s, lambda s: s.join("l2"), "blocked")
    out = s.block(H, "outsider")  # not present: barred in advance, no removal
    assert out.events == (Event("blocked", "outsider", actor=H, attrs={"scope": "space"}),)
    assert "outsider" in s.blocked and "outsider" not in s.removed
    assert_refused(s, lambda s: s.join("outsider"), "blocked")
    assert kinds(s.block(H, "c2")) == ["blocked", "removed"]


@pytest.mark.parametrize(
    ("actor", "target"),
    [("l1", "s1"), ("s1", "l1"), ("l1", H), ("c1", H), ("c1", "c2"), ("l1", "outsider")],
)
def test_personal_block_has_no_space_effect(actor: str, target: str) -> None:
    s = std()
    before = snap(s)
    out = s.block(actor, target)
    assert out.events == (
        Event("blocked", target, actor=actor, role=s.role_of(target), attrs={"scope": "personal"}),
    )
    assert snap(s) == before


def test_report_user_and_space() -> None:
    s = std()
    out = s.report("l1", "s1", "spam")
    assert out.events == (
        Event(
            "report_filed",
            "s1",
            actor="l1",
            role=Role.SPEAKER,
            attrs={"reason": "spam", "target_type": "user"},
        ),
    )
    out = s.report("l1", None)
    assert out.events == (
        Event("report_filed", SID, actor="l1", attrs={"reason": "", "target_type": "space"}),
    )
    assert s.leave("l3") and s.remove(H, "l2")
    assert s.report("s1", "l3", "left")
    assert s.report("s1", "l2", "removed")
    assert s.report("s1", H, "host")


def test_moderate_dismiss_with_and_without_target() -> None:
    s = std()
    before = snap(s)
    out = s.moderate(ModerationAction.DISMISS, None)
    assert out.events == (Event("report_resolved", SID, attrs={"action": "dismiss"}),)
    out = s.moderate(ModerationAction.DISMISS, "s1")
    assert out.events == (
        Event("report_resolved", "s1", role=Role.SPEAKER, attrs={"action": "dismiss"}),
    )
    assert snap(s) == before


def test_moderate_remove() -> None:
    s = std()
    out = s.moderate(ModerationAction.REMOVE, "s1")
    assert out.events == (
        Event("removed", "s1", attrs={"reason": "moderation"}),
        Event("report_resolved", "s1", attrs={"action": "remove"}),
    )
    assert "s1" in s.removed and s.role_of("s1") is None
    out = s.moderate(ModerationAction.REMOVE, "gone")
    assert kinds(out) == ["report_resolved"]
    assert "gone" in s.removed
    assert_refused(s, lambda s: s.join("gone"), "removed")


def test_moderate_block() -> None:
    s = std()
    out = s.moderate(ModerationAction.BLOCK, "l2")
    assert out.events == (
        Event("blocked", "l2", role=Role.LISTENER, attrs={"scope": "space"}),
        Event("removed", "l2", attrs={"reason": "moderation"}),
        Event("report_resolved", "l2", attrs={"action": "block"}),
    )
    assert "l2" in s.blocked and "l2" in s.removed and s.hand_queue() == ()
    out = s.moderate(ModerationAction.BLOCK, "ghost")
    assert kinds(out) == ["blocked", "report_resolved"]
    assert "ghost" in s.blocked


def test_moderate_end() -> None:
    s = std()
    out = s.moderate(ModerationAction.END, None)
    assert out.events == (
        Event("space_ended", SID, attrs={"reason": "moderation"}),
        Event("report_resolved", SID, attrs={"action": "end"}),
    )
    assert s.status is SpaceStatus.ENDED and dict(s.participants) == {}


def test_moderate_removing_host_ends_space() -> None:
    s = std()
    out = s.moderate(ModerationAction.REMOVE, H)
    assert kinds(out) == ["removed", "space_ended", "report_resolved"]
    assert s.status is SpaceStatus.ENDED and H in s.removed


def test_moderate_on_scheduled_space() -> None:
    s = sched()
    assert kinds(s.moderate(ModerationAction.BLOCK, "troll")) == ["blocked", "report_resolved"]
    assert s.start(H)
    assert_refused(s, lambda s: s.join("troll"), "blocked")


# --------------------------------------------------------------------------- settings


def test_set_who_may_speak_drops_disallowed_hands() -> None:
    s = make(listeners=("a", "b", "c"), hands=("a", "b", "c"), follows=("b",))
    out = s.set_who_may_speak(H, WhoMaySpeak.FOLLOWED)
    restricted = {"reason": "speaking_restricted"}
    assert out.events == (
        Event("speak_setting_changed", SID, actor=H, attrs={"setting": "followed"}),
        Event("hand_lowered", "a", actor=H, role=Role.LISTENER, attrs=restricted),
        Event("hand_lowered", "c", actor=H, role=Role.LISTENER, attrs=restricted),
    )
    assert s.who_may_speak is WhoMaySpeak.FOLLOWED and s.hand_queue() == ("b",)
    assert s.set_who_may_speak(H, WhoMaySpeak.FOLLOWED).events == ()
    out = s.set_who_may_speak(H, WhoMaySpeak.INVITED)
    assert kinds(out) == ["speak_setting_changed", "hand_lowered"]
    assert s.hand_queue() == ()
    out = s.set_who_may_speak(H, WhoMaySpeak.EVERYONE)
    assert kinds(out) == ["speak_setting_changed"]
    assert s.raise_hand("a")


# --------------------------------------------------------------------------- role table

ROLE_ACTOR = {Role.HOST: H, Role.COHOST: "c1", Role.SPEAKER: "s1", Role.LISTENER: "l1"}
MODS = frozenset({Role.HOST, Role.COHOST})
HOST_ONLY = frozenset({Role.HOST})


def _free_cohost_seat() -> Space:
    s = std()
    assert s.remove_cohost("c2", "c2")
    return s


# action -> (setup, call(space, actor), succeeded(outcome, space), roles allowed)
PRIVILEGED: dict[str, tuple[Callable[[], Space], Callable[[Space, str], Outcome], Any, Any]] = {
    "approve": (std, lambda s, a: s.approve(a, "l2"), None, MODS),
    "decline": (std, lambda s, a: s.decline(a, "l2"), None, MODS),
    "invite": (std, lambda s, a: s.invite(a, "l3"), None, MODS),
    "demote": (std, lambda s, a: s.demote(a, "s2"), None, MODS),
    "add_cohost": (_free_cohost_seat, lambda s, a: s.add_cohost(a, "l3"), None, HOST_ONLY),
    "remove_cohost": (std, lambda s, a: s.remove_cohost(a, "c2"), None, HOST_ONLY),
    "mute": (std, lambda s, a: s.mute(a, "s2"), None, MODS),
    "mute_all": (std, lambda s, a: s.mute_all(a), None, MODS),
    "remove": (std, lambda s, a: s.remove(a, "l3"), None, MODS),
    "block": (
        std,
        lambda s, a: s.block(a, "l3"),
        lambda out, s: out.ok and "l3" in s.blocked and s.role_of("l3") is None,
        MODS,
    ),
    "set_who_may_speak": (
        std,
        lambda s, a: s.set_who_may_speak(a, WhoMaySpeak.INVITED),
        None,
        HOST_ONLY,
    ),
    "end": (std, lambda s, a: s.end(a), None, HOST_ONLY),
    # Only the host is present before start, so other roles are refused as not_present.
    "start": (sched, lambda s, a: s.start(a), None, HOST_ONLY),
}


@pytest.mark.parametrize("role", list(ROLE_ACTOR), ids=str)
@pytest.mark.parametrize("action", list(PRIVILEGED))
def test_role_permission_table(action: str, role: Role) -> None:
    setup, call, succeeded, allowed = PRIVILEGED[action]
    s = setup()
    actor = ROLE_ACTOR[role]
    before = snap(s)
    out = call(s, actor)
    did = succeeded(out, s) if succeeded else out.ok
    assert did == (role in allowed), (action, role, out)
    if role not in allowed:
        assert snap(s) == before  # personal blocks included: no space effect
        if not out.ok:
            assert out.code in {"not_allowed", "not_present"}
        else:
            assert action == "block"


def test_start_by_present_non_host_is_not_allowed() -> None:
    s = std()
    for u in ("c1", "s1", "l1"):
        assert_refused(s, lambda s, u=u: s.start(u), "not_allowed")  # type: ignore[misc]


# --------------------------------------------------------------------------- vocabulary


def test_full_tour_emits_exactly_the_vocabulary() -> None:
    seen: list[Event] = []

    def do(out: Outcome) -> None:
        assert out, out
        seen.extend(out.events)

    s = Space(SID, H, status=SpaceStatus.SCHEDULED, host_follows=["b"])
    do(s.start(H))
    for u in ("a", "b", "c", "d", "e"):
        do(s.join(u))
    do(s.raise_hand("a"))
    do(s.raise_hand("b"))
    do(s.raise_hand("c"))
    do(s.lower_hand("c"))
    do(s.approve(H, "a"))
    do(s.decline(H, "b"))
    do(s.invite(H, "c"))
    do(s.decline_invite("c"))
    do(s.invite(H, "c"))
    do(s.accept_invite("c"))
    do(s.add_cohost(H, "d"))
    do(s.mute("d", "a"))
    do(s.unmute("a", "a"))
    do(s.mute_all(H))
    do(s.demote("d", "a"))
    do(s.remove_cohost(H, "d"))
    do(s.report("e", "a", "spam"))
    do(s.moderate(ModerationAction.DISMISS, "a"))
    do(s.block(H, "a"))
    do(s.remove(H, "c"))
    do(s.raise_hand("e"))
    do(s.set_who_may_speak(H, WhoMaySpeak.INVITED))
    do(s.start_recording(H))
    do(s.stop_recording(H))
    do(s.captions_on(H))
    do(s.leave("e"))
    do(s.end(H))
    assert {e.kind for e in seen} == EVENT_KINDS


# --------------------------------------------------------------------------- random walk

USERS = [H, *(f"u{i}" for i in range(14))]
ACTIONS = list(ModerationAction)
SETTINGS = list(WhoMaySpeak)

OPS: list[tuple[str, float, Callable[[Space, str, str, random.Random], Outcome | None]]] = [
    ("join", 10, lambda s, a, t, r: s.join(r.choice(USERS))),
    (
        "leave",
        1.5,
        lambda s, a, t, r: s.leave(a if a != H or r.random() < 0.05 else r.choice(USERS)),
    ),
    ("raise_hand", 5, lambda s, a, t, r: s.raise_hand(a)),
    ("lower_hand", 1, lambda s, a, t, r: s.lower_hand(a)),
    ("approve", 5, lambda s, a, t, r: s.approve(a, t)),
    ("decline", 1, lambda s, a, t, r: s.decline(a, t)),
    ("invite", 3, lambda s, a, t, r: s.invite(a, t)),
    ("accept_invite", 4, lambda s, a, t, r: s.accept_invite(a)),
    ("decline_invite", 1, lambda s, a, t, r: s.decline_invite(a)),
    ("demote", 2, lambda s, a, t, r: s.demote(a, t)),
    ("add_cohost", 2, lambda s, a, t, r: s.add_cohost(a, t)),
    ("remove_cohost", 1, lambda s, a, t, r: s.remove_cohost(a, t)),
    ("mute", 3, lambda s, a, t, r: s.mute(a, t)),
    ("unmute", 3, lambda s, a, t, r: s.unmute(a, t)),
    ("mute_all", 0.5, lambda s, a, t, r: s.mute_all(a)),
    ("remove", 0.5, lambda s, a, t, r: s.remove(a, t)),
    ("block", 0.7, lambda s, a, t, r: s.block(a, t)),
    ("report", 0.5, lambda s, a, t, r: s.report(a, r.choice([t, None]), "x")),
    ("moderate", 0.15, lambda s, a, t, r: s.moderate(r.choice(ACTIONS), r.choice([t, None]))),
    ("set_who_may_speak", 0.7, lambda s, a, t, r: s.set_who_may_speak(a, r.choice(SETTINGS))),
    ("start", 4, lambda s, a, t, r: s.start(a)),
    ("end", 0.1, lambda s, a, t, r: s.end(a)),
    ("follow", 0.3, lambda s, a, t, r: s.follow(t)),
    ("unfollow", 0.3, lambda s, a, t, r: s.unfollow(t)),
]


def check_invariants(s: Space) -> None:
    lim = s.limits
    roles = dict(s.participants)
    assert len(s.cohosts()) <= lim.max_cohosts
    assert s.n_speakers == len(s.speakers()) <= lim.max_speakers
    assert s.n_listeners == len(s.listeners())
    assert sorted(s.stage() + s.listeners()) == sorted(roles)
    assert all(roles[u] is Role.LISTENER for u in s.listeners())
    assert all(roles[u] is Role.SPEAKER for u in s.speakers())
    assert all(roles[u] is Role.COHOST for u in s.cohosts())
    assert set(s.hand_queue()) <= set(s.listeners())
    assert set(s.pending_invites()) <= set(s.listeners())
    assert not (s.blocked | s.removed) & set(roles)
    assert set(roles) <= s.ever_joined
    for u in USERS:
        if s.is_muted(u):
            assert u in s.stage()
        assert s.may_be_heard(u) == (
            s.status is SpaceStatus.LIVE and u in s.stage() and not s.is_muted(u)
        )
    if s.status is SpaceStatus.ENDED:
        assert roles == {} and s.hand_queue() == () and dict(s.pending_invites()) == {}
    else:
        assert roles.get(s.host) is Role.HOST and s.stage()[0] == s.host


def test_random_walk_keeps_invariants() -> None:
    rng = random.Random(20240611)
    limits = Limits(max_cohosts=2, max_speakers=2, listener_cap=6)
    names = [name for name, _, _ in OPS]
    weights = [w for _, w, _ in OPS]
    fns = dict((name, fn) for name, _, fn in OPS)
    successes: dict[str, int] = dict.fromkeys(names, 0)
    codes_seen: set[str] = set()
    spaces = ended_steps = 0

    def fresh() -> Space:
        nonlocal spaces
        spaces += 1
        status = rng.choice([SpaceStatus.LIVE, SpaceStatus.LIVE, SpaceStatus.SCHEDULED])
        return Space(SID, H, limits=limits, host_follows=rng.sample(USERS[1:], 6), status=status)

    def pick(s: Space) -> str:
        # Bias towards people who can act, so privileged paths succeed often enough.
        present = list(s.participants)
        x = rng.random()
        if x < 0.25:
            return H
        if x < 0.45 and s.cohosts():
            return rng.choice(s.cohosts())
        if x < 0.85 and present:
            return rng.choice(present)
        return rng.choice(USERS)

    s = fresh()
    for _ in range(5000):
        if s.status is SpaceStatus.ENDED:
            ended_steps += 1
            if ended_steps > 5:
                s, ended_steps = fresh(), 0
        name = rng.choices(names, weights)[0]
        actor, target = pick(s), pick(s)
        was_ended = s.status is SpaceStatus.ENDED
        before = snap(s)
        out = fns[name](s, actor, target, rng)
        if out is None:  # follow/unfollow setters
            check_invariants(s)
            continue
        if out.ok:
            successes[name] += 1
            assert not was_ended, (name, out)
            assert {e.kind for e in out.events} <= EVENT_KINDS
        else:
            assert out.code in REFUSAL_CODES and out.reason and out.events == ()
            codes_seen.add(out.code)
            assert snap(s) == before, (name, actor, target, out)
            if was_ended:
                assert out.code == "space_ended"
        check_invariants(s)

    assert spaces >= 3
    assert codes_seen == REFUSAL_CODES  # the walk reaches every kind of edge
    assert all(successes[n] > 0 for n in names if n not in ("follow", "unfollow")), str(successes)


def test_restored_removals_and_past_participants() -> None:
    """After a restart the server rebuilds a space with who was removed and who was there."""
    space = Space("s", "h", removed=["troll"], past_participants=["old"])
    refused = space.join("troll")
    assert not refused.ok and refused.code == "removed"
    assert space.join("fan").ok
    assert space.report("fan", "old").ok  # someone who was in the space before can be reported


def test_delivery_rule_the_server_and_simulator_share() -> None:
    from spacesim import policy

    D = policy.Delivery
    ev = policy.Event
    assert policy.delivery(ev("participant_joined", "u")) is D.STAGE
    assert policy.delivery(ev("participant_left", "u")) is D.STAGE
    assert policy.delivery(ev("participant_left", "u"), noticed=True) is D.EVERYONE
    assert policy.delivery(ev("report_filed", "u", actor="r")) is D.STAGE
    personal = ev("blocked", "u", actor="a", attrs={"scope": "personal"})
    assert policy.delivery(personal) is D.ACTOR
    assert policy.delivery(ev("blocked", "u", actor="h", attrs={"scope": "space"})) is D.EVERYONE
    for kind in ("reaction", "muted", "speaker_granted", "space_ended", "hand_raised"):
        assert policy.delivery(ev(kind, "u")) is D.EVERYONE


def test_admission_reserves_one_stream_per_audible_speaker_up_to_the_slots() -> None:
    """The server's --capacity and the model's server.max_streams count alike: a speaker
    past the slots is dropped, so it costs no forwarding (2026-12-07: both counted every
    audible speaker before)."""
    assert [policy.streams_reserved(n, 3) for n in range(6)] == [1, 1, 2, 3, 3, 3]
    assert policy.streams_reserved(5, 1) == 1
    assert policy.streams_reserved(4) == policy.HEARD_AT_ONCE

"""Load generation: Locust users per role driven by a scenario.

Importing this package imports nothing heavy. The modules, one concept each:

* gevent-free (any asyncio loop; unit tests drive them with tests/load/fakes.py):
  `api` (the `SpaceClient` interface and the `Context` the behaviour shares),
  `host` (`Room`: a host's space, stage, moderation, timeline), `listener`
  (`ListenerSession`), `voice` (stage members' talk-spurt tracks), `live` (the
  `SpaceClient` over a real server), `shape` (users over time from the scenario),
  `dryrun` (`dry_run`: hosts and listeners for a few seconds on any client), `run`
  (drives Locust in a subprocess), `state` (per-process state; no Locust import).
* target drivers (`targets`: the URL's scheme picks one): `live` for spacesim's
  protocol; `janus` (VideoRoom / AudioBridge over `janus_api`, Janus's HTTP API) and
  `janus_server` (Janus in a network namespace for tests and `spacesim janus up`).
* Locust's side (import only after ``import locust``: gevent must patch first):
  `bridge` (the gevent <-> asyncio bridge), `hooks` (options, init / stop hooks,
  request events), `parts` (records out of a process), `users` (the thin `Host` /
  `Listener` users and `ScenarioShape`, which locustfiles import).
"""

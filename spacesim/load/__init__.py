"""Load generation: Locust users per role driven by a scenario (see `spacesim.load.users`).

Importing this package imports nothing heavy. `spacesim.load.users` and
`spacesim.load.bridge` need gevent's monkey-patching first (``import locust``), so
only locustfiles import them; `spacesim.load.run` drives Locust in a subprocess.
"""

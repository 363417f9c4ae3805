"""Scenario-driven load on a spacesim server.

    locust -f loadtests/locustfile.py --scenario scenarios/smoke.yaml --host http://127.0.0.1:8080

Users follow the scenario's arrival profile (``-u`` caps the peak; ``--spacesim-shape
steady`` holds ``-u`` users instead); each client's path gets the scenario's network
(``--spacesim-network none`` for plain loopback). `spacesim load SCENARIO` runs this
headless, with an embedded server if no --target.
"""

import locust  # noqa: F401  first: gevent monkey-patches before aiohttp/aiortc load

from spacesim.load.users import Host, Listener, Poster, ScenarioShape

__all__ = ["Host", "Listener", "Poster", "ScenarioShape"]

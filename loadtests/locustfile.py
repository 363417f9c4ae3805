"""Scenario-driven load on a spacesim server.

    locust -f loadtests/locustfile.py --scenario scenarios/smoke.yaml --host http://127.0.0.1:8080

(`spacesim load SCENARIO` runs this headless, with an embedded server if no --target.)
"""

import locust  # noqa: F401  first: gevent monkey-patches before aiohttp/aiortc load

from spacesim.load.users import Host, Listener

__all__ = ["Host", "Listener"]

"""The web page for the people who run the relay: /ui (status, timeline, channels) and its JSON API.

`register(relay)` adds the routes to a Relay and returns the WebUi, whose hooks app.py calls: the
event listener (live feed), `synced` (the last sync's report) and `close`. Importing the package
imports nothing else (the CLI's `relay ui-hash` needs only relay.web.auth).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.shell.app import Relay
    from relay.web.api import WebUi


def register(relay: Relay) -> WebUi:
    from relay.web.api import WebUi

    ui = WebUi(relay, wall_clock=relay.wall_clock)
    relay.routes["/ui"] = (("GET", "HEAD"), lambda proto, req: ui.handle(proto, req, ""))
    relay.prefixes.append(("/ui/", ("GET", "HEAD", "POST"), ui.handle))
    return ui

"""pyroute2, imported once, under one lock, by whichever thread needs it first.

The daemon imports pyroute2 late and on worker threads: opening the link
monitor, the scan's default-route lookup and the first CNI call can all be
first, at the same moment. Two threads importing it together can meet
inside its circular imports, and one of them then fails with "cannot import
name ... from partially initialized module". Every late entry point calls
`load` before its own pyroute2 imports; the package import brings in every
pyroute2 module netdp uses, so those imports then only look them up.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()


def load() -> None:
    with _lock:
        import pyroute2  # noqa: F401  (its __init__ imports the netlink protocols)

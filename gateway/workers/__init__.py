"""``serve --workers N``: N media processes behind one public HTTP side.

- identity.py: which worker owns a call (in its channel id) -- the ``owner_id()`` seam;
- routing.py: which worker gets a call's events and an API request -- the routing seam;
- supervisor.py: the public side (webhook, /v1, /metrics, health) and the workers' lives;
- process.py: one worker process as the supervisor sees it (start, restart, local channel);
- worker.py: the worker process itself (a Gateway on a Unix socket);
- metrics.py: one /metrics from every worker (prometheus_client multiprocess mode).

Nothing is imported here: gateway.calls imports identity.py, so this package stays light.
"""

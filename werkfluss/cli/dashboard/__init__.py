"""``werkfluss dashboard``: a web UI for runs, their timelines, workers, queues and schedules.

    werkfluss dashboard [--port 8080] [--host 127.0.0.1] [--token TOKEN]

A small ASGI app (Starlette, Jinja2 templates, a little plain JavaScript)
served by uvicorn; install it with ``pip install 'werkfluss[dashboard]'``.
Read-only unless started with an access token (``--token`` or
``$WERKFLUSS_DASHBOARD_TOKEN``); see docs/operations.md, "Dashboard".

- :mod:`.serve`: the command (arguments, uvicorn);
- :mod:`.app`: the pages and JSON endpoints; :mod:`.actions`: cancel, retry, send;
- :mod:`.guard`: the token and same-origin rules; :mod:`.filters`: the run list's filters;
- :mod:`.views`: the timeline and the "waiting for" box, as pure functions;
- ``templates/`` and ``static/``: shipped in the wheel, no build step.
"""

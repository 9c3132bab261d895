"""SSE server (container task): ``GET /events``, the fallback for networks that
block WebSocket. ``python -m rtstream_sse``; the app is :func:`rtstream_sse.app.create_app`.

One Redis reader per process (:mod:`rtstream_sse.reader`) feeds a hub
(:mod:`rtstream_sse.hub`) that writes each event's frame, encoded once, to every
matching client of its entity.
"""

"""The dashboard at /ui: a page, one script and one stylesheet shipped in the package (static/, no CDN), the
routes that serve them and their paged JSON (routes.py, views.py), the one-time login codes and the session
cookies a browser uses instead of the API token (sessions.py), and the 15-minute traffic history per revision
(history.py). It reads the leader through the API's `Leader` calls plus a few of its own (views.UiLeader); it
changes nothing: a session cookie is accepted only for GET /ui and /ui/*.
"""

"""The web wing: the falcon app, its API and dashboard, the gunicorn worker (the core is `server.core`)."""

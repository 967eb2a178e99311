"""gunicorn settings for the server program, from the AYON_* settings."""

import os

from server import settings as settings_mod

_settings = settings_mod.load()

wsgi_app = "server.app:get_app()"
bind = [_settings.http_bind]
workers = _settings.server_workers
# falcon ASGI under gunicorn's own asyncio worker: see docs/benchmarks.md for the numbers.
worker_class = "asgi"
worker_connections = 1000
# Long-lived requests (the event stream) must not be killed as hung workers.
timeout = 120
graceful_timeout = 20  # supervisord's stopwaitsecs for the server is longer
keepalive = 5
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
control_socket_disable = True
proc_name = "ayon-server"
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

"""`falcon-ceiling`: a bare falcon ASGI app answering every path with one constant JSON body.

Run under the server's own gunicorn settings, it measures what gunicorn and
falcon cost before any of our code runs.
"""

import json
import os

import falcon
import falcon.asgi

# The pid lets the harness see which worker answered, like /api/info does.
BODY = json.dumps({"version": "0.0.0", "status": "constant", "pid": os.getpid()}).encode()


class Constant:
    async def on_get(self, req, resp, **_):
        resp.content_type = falcon.MEDIA_JSON
        resp.data = BODY


app = falcon.asgi.App()
app.add_sink(Constant().on_get, "/")

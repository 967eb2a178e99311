"""The ceiling: a bare falcon ASGI app that answers /health/ready with a constant."""

import falcon.asgi


class Ready:
    async def on_get(self, req, resp):
        resp.media = {"status": "ready"}


app = falcon.asgi.App()
app.add_route("/health/ready", Ready())

"""gunicorn's asgi worker, taking new connections a few at a time.

asyncio accepts up to `backlog` (100) waiting connections each time the
shared listening socket wakes a worker, so the first worker to wake took a
whole burst of keep-alive connections and the other sat idle (bench/http saw
0/100 splits). Taking a few per wake lets every worker's loop compete for
the rest; the kernel's listen queue keeps gunicorn's `backlog`.
"""

from gunicorn.workers.gasgi import ASGIWorker

ACCEPT_BATCH = 2


class BalancedASGIWorker(ASGIWorker):
    def _setup_event_loop(self):
        super()._setup_event_loop()
        create_server = self.loop.create_server
        listen_queue = self.cfg.backlog

        async def balanced_create_server(*args, **kwargs):
            kwargs["backlog"] = ACCEPT_BATCH
            server = await create_server(*args, **kwargs)
            if kwargs.get("sock") is not None:
                kwargs["sock"].listen(listen_queue)
            return server

        self.loop.create_server = balanced_create_server

"""`python -m bench.http.uvicorn_run APP --port P --workers N --loop L --http H`: the FastAPI peers' launcher.

Each of the N uvicorn processes listens on its own SO_REUSEPORT socket, so
the kernel spreads connections evenly, as gunicorn does with reuse_port.
The socket has TCP_NODELAY, which Linux passes on to accepted sockets:
without it (uvicorn's --workers sockets lack it) every response waited
~40 ms on a delayed ACK and a peer served ~700 req/s whatever it did.
"""

import argparse
import socket
import subprocess
import sys


def serve(app: str, port: int, loop: str, http: str) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    # The access log stays on (uvicorn's default), as it is on the server under test.
    uvicorn.Server(uvicorn.Config(app, loop=loop, http=http)).run(sockets=[sock])


def main() -> None:
    """Start N uvicorn processes serving APP and wait for them."""
    parser = argparse.ArgumentParser(prog="python -m bench.http.uvicorn_run")
    parser.add_argument("app", help="module:attribute of the ASGI app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    parser.add_argument("--http", choices=("h11", "httptools"), required=True)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.app, args.port, args.loop, args.http)
        return
    command = [sys.executable, "-m", "bench.http.uvicorn_run", args.app, "--serve", "--port", str(args.port),
               "--loop", args.loop, "--http", args.http]
    children = [subprocess.Popen(command) for _ in range(args.workers)]
    sys.exit(max(child.wait() for child in children))


if __name__ == "__main__":
    main()

"""`python -m procs.entrypoint [CMD ...]`, the image's entrypoint: a documented name; the code is supervision/handover.py."""

from supervision.handover import run

if __name__ == "__main__":
    run()

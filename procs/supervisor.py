"""`python -m procs.supervisor [--programs]`: a documented name; the generator is supervision/generator.py."""

from supervision.generator import run

if __name__ == "__main__":
    run()

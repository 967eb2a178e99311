"""The start-up machine: everything that starts, supervises and stops an instance's process tree.

`handover` is the first process (the image's entrypoint), `prepare` checks the
settings in the second and writes the config (`generator`, from the programs
declared in `roster`), `supervisord` runs supervisord in that process with the
patches of `patches`, `preload` forks the Python programs from it, `lifeline`
ties every program to it, `watchdog` ends the instance when it cannot work,
`console` is the event listener that shows every program's output, and
`healthcheck` is the image's health check. The programs themselves are
`procs/`; this package imports only the core.
"""

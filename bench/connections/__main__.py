"""bench/connections: PostgreSQL connections per instance, idle, under load, at peak and idle again."""
from bench.connections.run import main

main()

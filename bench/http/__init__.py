"""HTTP benchmark: this server against a bare falcon ceiling and a FastAPI + uvicorn peer."""

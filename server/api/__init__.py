"""The HTTP resources, one module per area; each responder declares what it takes and answers (spec.py)."""

"""The HTTP resources, one module per area; each has `register(app, ctx)`."""

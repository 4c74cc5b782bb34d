"""The HTTP plumbing: app, middleware, errors, bodies, SSE, telemetry, OpenAPI."""

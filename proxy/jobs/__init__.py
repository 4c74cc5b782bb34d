"""A job's run, its events and their rendering, the jobs API and the WebSocket."""

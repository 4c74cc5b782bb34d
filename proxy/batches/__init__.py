"""Batches (/v1/batches): the proxy-side activities, their worker, and the lines of the files."""

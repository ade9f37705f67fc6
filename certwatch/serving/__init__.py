"""certwatch's own HTTP endpoints: /metrics, the API, the status page, and their security."""

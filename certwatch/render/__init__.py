"""Pure renderings of what certwatch knows, for people and machines: the JSON shape and
the table (report), Prometheus exposition text (exposition), the status page (statuspage)."""

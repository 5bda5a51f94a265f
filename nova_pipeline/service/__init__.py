"""The ``nova serve`` HTTP service: search with failover (and, later, the admin API). It calls ``core``."""

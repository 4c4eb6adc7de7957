"""expiryd: turns Redis Cluster key expirations into reliable work."""

__version__ = "0.1.0"

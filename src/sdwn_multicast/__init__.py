"""sdwn_multicast package (see README)."""

__version__ = "0.1.0"

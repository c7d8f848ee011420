"""Load tests and overhead measurements of the Tessera gateway (loopback only)."""

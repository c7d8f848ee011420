"""Tessera services: the gateway, the model workers and what they share."""

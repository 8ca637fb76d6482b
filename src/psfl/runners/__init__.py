"""Runners only orchestrate: they call a :class:`psfl.methods.FederatedMethod`."""

"""Runners only orchestrate: they call a :class:`psfl.methods.FederatedMethod` round by round,
in-process (:mod:`~psfl.runners.inprocess`, with checkpoint and resume) or on Flower
(:mod:`~psfl.runners.flower`), and keep the run folder (:mod:`~psfl.runners.store`,
its lock, :mod:`psfl.utils.lock`). The layer above the methods: it may import the core and
``psfl.methods``, never experiments or the CLI."""

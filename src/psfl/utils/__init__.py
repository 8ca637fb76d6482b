"""Plumbing every layer uses (core, lowest): the error types (:mod:`psfl.utils.errors`),
the name -> factory registry (:mod:`psfl.utils.registry`), device resolution and seeded
draws that give the same numbers on any device (:mod:`psfl.utils.device`) and atomic file
writes (:mod:`psfl.utils.fileio`). It knows nothing of semantic communication or
federated learning and may import no other psfl package."""

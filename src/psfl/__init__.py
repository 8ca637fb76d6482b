"""psfl: personalized federated learning of GAI-assisted semantic communication.

Reference implementation of Peng et al., "Personalized Federated Learning for
GAI-Assisted Semantic Communications" (PSFL = PLD + AGP).
"""
__version__ = "0.1.0"

"""Engine-agnostic federated math: PLD losses, FedAvg, AGP pruning, the communication
model, the one local-training loop and its hooks. Pure functions on tensors and state
dicts; runners only orchestrate (core; may import ``psfl.utils``, ``psfl.channel``,
``psfl.models``, ``psfl.data``, ``psfl.codecs``, ``psfl.evaluate`` and ``psfl.training``)."""

"""Engine-agnostic federated math: PLD losses, FedAvg, AGP pruning, the communication
model. Pure functions on tensors and state dicts; runners only orchestrate."""

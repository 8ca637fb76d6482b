"""What one training step optimises and how it steps (core), shared by central and
federated training: the task loss of Eqs. 8 and 15/16 (:mod:`psfl.training.losses`)
and the optimiser registry with the clipped step (:mod:`psfl.training.optim`). It may
import ``psfl.utils``, ``psfl.models`` and ``psfl.evaluate``; the federated math
(``psfl.fl``), the config and everything above import it."""

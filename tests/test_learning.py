"""Learning: tiny PSFL and FedAvg runs on the bundled Fashion-MNIST sample end far above
chance (10 classes: 0.10; an untrained model scores about that)."""
import pytest

from psfl.config import load_config
from psfl.runners.inprocess import run_federated

from test_golden import PINNED  # noqa: E402  (the pinned 1-epoch loss classifier and scorer)
from test_runner import tiny_overrides  # noqa: E402

THRESHOLD = 0.40  # 4x chance; measurements in the test's docstring


def global_accuracy(record: dict) -> float:
    """The global model's accuracy (independent scorer) in one round's record."""
    return record["global"]["accuracy"]


# method -> (rounds, extra overrides). PSFL's student is cpu-CSC: tiny-CSC (4.6 k
# parameters) barely learns in this budget. AGP prunes from round 0 (tiny_overrides), and
# the student still takes off in round 1; its ramp costs a dip in rounds 4-7 on some seeds.
RUNS = {
    "psfl": (4, ["model.student='cpu-CSC'"]),
    "fedavg": (4, []),  # trains tiny-M
}


@pytest.mark.parametrize("method", list(RUNS))
def test_tiny_federated_run_learns(method, tmp_path):
    """Final global accuracy (the pinned independent scorer on 256 test images at 10 dB;
    3 clients, 30 local SGD steps of 16 per round), measured for seeds 0-4 before setting
    the threshold (`/tmp`-free script: loop this test's body over seed=0..4):

        psfl   (4 rounds): 0.594 0.613 0.676 0.609 0.582   (min 0.582; AMD EPYC, 2026-12-07;
                            8 rounds of seed 4: 0.070 0.387 0.566 0.582 0.449 0.570 0.648 0.566)
        fedavg (4 rounds): 0.711 0.688 0.723 0.660 0.691   (min 0.660)

    The threshold 0.40 is 4x chance and 0.18 below the lowest measured value, so float
    drift on another CPU (a few images) cannot cross it; a run that does not learn
    (about 0.10) or half-learns does. The test runs seed 0.
    """
    rounds, extra = RUNS[method]
    over = tiny_overrides(tmp_path / "cache", rounds=rounds, method=method) + extra + [
        "seed=0", "train.local_steps=30", "data.eval_samples=256", *PINNED]
    records = run_federated(load_config(None, over), tmp_path / "run", progress=False).records
    assert len(records) == rounds
    final = global_accuracy(records[-1])
    assert final > THRESHOLD, (method, [global_accuracy(r) for r in records])

"""The README's "Adding a method" example, run from the README text itself."""
import re
from pathlib import Path

import numpy as np
import torch

from psfl.cli import main
from psfl.methods import METHODS

from test_runner import tiny_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_readme_method_example_runs_and_holds_its_ball(tmp_path, cache, capsys):
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(_example(), "README.md", "exec"), namespace)
    try:
        over = tiny_overrides(cache, rounds=1, method="fedavg-ball")
        args = ["run", "--no-progress", "--no-plots", "--out", str(tmp_path / "r")]
        for o in over + ["method_options.fedavg-ball.radius=0.01"]:
            args += ["--set", o]
        assert main(args) == 0
        assert main(["run", "--no-progress", "--set", 'method="fedavg-ball"',
                     "--set", "method_options.fedavg-ball.radus=1"]) == 2
        assert "method_options.fedavg-ball.radus" in capsys.readouterr().err
        # the hook does what it says: after local training the weights are within the ball
        from psfl.config import load_config
        from psfl.methods import build_env, options_for

        cfg = load_config(None, over + ["method_options.fedavg-ball.radius=0.01", "train.lr=0.5"])
        env = build_env(cfg, progress=False)
        m = METHODS.get("fedavg-ball")(env, options_for(cfg), cfg)
        m.init_server()
        payload, _ = m.broadcast(0, np.full(3, 10.0))
        start = dict(m.decode_down({}, payload))
        m.client_update(0, m.init_client(0), 0, payload, 10.0, torch.Generator().manual_seed(0))
        params = dict(m.net.named_parameters())
        dist = float(torch.sqrt(sum((p.detach() - start[k]).double().pow(2).sum() for k, p in params.items())))
        assert 0 < dist <= 0.01 * (1 + 1e-5)
    finally:
        METHODS._items.pop("fedavg-ball", None)

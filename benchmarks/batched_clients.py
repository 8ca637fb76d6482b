"""Does training K same-architecture clients as one batched computation pay on this CPU?

For each preset: K clients, each its own weights, BatchNorm statistics and SGD momentum,
one local step each on its own batch (B images, AWGN noise drawn outside the model), two
ways, alternating, several repeats, median per way:

  sequential  K calls of the model, one after another (what the in-process engine does)
  vmap        one call: ``torch.func.functional_call`` + ``vmap`` over the K clients'
              stacked parameters and buffers, one backward, one SGD step on the stacks

and, as the bound that batching could reach, ``one-batch``: one model on a batch of K*B
images. Prints the ratios vmap / sequential and one-batch / sequential (< 1: faster) and
the largest difference of the K clients' weights after one step between the two ways.
Only a ratio measured in one run is claimed (the machine is shared).

    python benchmarks/batched_clients.py [--presets cpu-M cpu-CSC] [--clients 9] [--batch 32]
        [--threads 1] [--repeats 7] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from common import alternate, cpu_line


class GivenNoise(nn.Module):
    """An AWGN channel whose noise is passed in (a vmapped call cannot use generators)."""

    def forward(self, x, snr_db, generator=None):
        from psfl.channel import db_to_linear, power_normalize

        X = power_normalize(x)
        return X, X + generator * (1.0 / db_to_linear(snr_db)) ** 0.5


def bench(preset: str, K: int, B: int, repeats: int, img: int, chans: int) -> dict:
    from psfl.models import create_model

    torch.manual_seed(0)
    models = [create_model(preset, img_size=img, in_chans=chans) for _ in range(K)]
    for m in models:
        m.channel = GivenNoise()
        m.train()
    base = create_model(preset, img_size=img, in_chans=chans)
    base.channel = GivenNoise()
    base.train()
    x = torch.rand(K, B, chans, img, img)
    with torch.no_grad():
        shape = models[0](x[0], 10.0, generator=torch.zeros(1)).X.shape
    noise = torch.randn(K, *shape)
    params, buffers = stack_module_state(models)
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    buffers = {k: v.clone() for k, v in buffers.items()}
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    opt = torch.optim.SGD(list(params.values()), lr=0.01, momentum=0.9)
    big = create_model(preset, img_size=img, in_chans=chans)
    big.channel = GivenNoise()
    big_opt = torch.optim.SGD(big.parameters(), lr=0.01, momentum=0.9)
    xb, nb = x.reshape(K * B, *x.shape[2:]), noise.reshape(K * shape[0], *shape[1:])

    def loss_of(out, xk):
        return (out.x_hat - xk).pow(2).mean()

    def sequential() -> None:
        for k, m in enumerate(models):
            loss = loss_of(m(x[k], 10.0, generator=noise[k]), x[k])
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()

    def one(p, b, xk, nk):
        return loss_of(functional_call(base, (p, b), (xk, 10.0), {"generator": nk}), xk)

    batched_loss = vmap(one)

    def batched() -> None:
        loss = batched_loss(params, buffers, x, noise).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def one_batch() -> None:
        loss = loss_of(big(xb, 10.0, generator=nb), xb)
        big_opt.zero_grad(set_to_none=True)
        loss.backward()
        big_opt.step()

    # equivalence after one step from the same weights
    sequential()
    batched()
    diff = max(float((params[k][i] - dict(models[i].named_parameters())[k]).abs().max())
               for k in params for i in range(K))
    med = alternate({"sequential": sequential, "vmap": batched, "one-batch": one_batch}, repeats)
    return {"preset": preset, "clients": K, "batch": B, "median_s": med,
            "vmap_over_sequential": med["vmap"] / med["sequential"],
            "one_batch_over_sequential": med["one-batch"] / med["sequential"],
            "max_weight_diff_after_one_step": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cpu-M", "cpu-L", "cpu-H", "cpu-CSC"])
    ap.add_argument("--clients", type=int, default=9)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--img", type=int, default=28)
    ap.add_argument("--chans", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {cpu_line(a.threads)}; {a.clients} clients x batch {a.batch}, {a.chans}x{a.img}x{a.img}")
    print("| preset | sequential s | vmap s | one batch of K*B s | vmap / seq | one-batch / seq | max diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for p in a.presets:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = bench(p, a.clients, a.batch, a.repeats, a.img, a.chans)
        r["fallbacks"] = sorted({re.sub(r".*batching rule for (\S+)\..*", r"\1", str(w.message))
                                 for w in caught if "batching rule" in str(w.message)})
        m = r["median_s"]
        print(f"| {p} | {m['sequential']:.3f} | {m['vmap']:.3f} | {m['one-batch']:.3f} | "
              f"{r['vmap_over_sequential']:.2f} | {r['one_batch_over_sequential']:.2f} | "
              f"{r['max_weight_diff_after_one_step']:.1e} |" + (f" no batching rule: {r['fallbacks']}"
                                                                 if r["fallbacks"] else ""))
        rows.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

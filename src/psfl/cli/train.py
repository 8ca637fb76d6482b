"""`psfl train`: train one SC model centrally, then score it at several test SNRs."""
from __future__ import annotations

import argparse

from psfl.cli import add_device_argument, command
from psfl.utils.errors import PsflError


def _snr_range(text: str) -> float | tuple[float, float]:
    """'10' -> 10.0; '0:25' -> (0.0, 25.0) (one SNR per sample, uniform in dB)."""
    try:
        parts = [float(v) for v in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or LO:HI in dB, got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2 and parts[0] <= parts[1]:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected a number or LO:HI with LO <= HI, got {text!r}")


@command("train", help="Train one SC model centrally (no federation) and report accuracy/PSNR/SSIM vs SNR")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="cpu-M", help="model preset (see `psfl models`), default cpu-M")
    p.add_argument("--bandwidth-ratio", metavar="K/N",
                   help="k/n, complex channel symbols per source value (e.g. 1/6): sets the model's channel "
                        "width c (default: the preset's)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--source", default="auto", help="auto | npz | torchvision | bundled")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="constant", help="constant | cosine (half-cosine decay to 0 over all "
                   "epochs, set per step)")
    p.add_argument("--optimizer", default="adamw", help="sgd | adam | adamw")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--snr", type=_snr_range, default=10.0, metavar="DB|LO:HI",
                   help="training SNR in dB, or a range drawn per sample (default 10)")
    p.add_argument("--channel", default="awgn", help="awgn | rayleigh | rician (default awgn)")
    p.add_argument("--test-snr", type=float, nargs="+", default=[0.0, 10.0, 20.0], metavar="DB",
                   help="test SNRs in dB (default 0 10 20)")
    p.add_argument("--eval-samples", type=int, default=0, help="test images scored per SNR (0 = all)")
    p.add_argument("--max-samples", type=int, help="train on a seeded subset of this many images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    add_device_argument(p)
    p.add_argument("--evaluator-arch", default="cnn")
    p.add_argument("--evaluator-epochs", type=int, default=3, help="epochs if the evaluator must be trained")
    p.add_argument("--evaluator-checkpoint", help="user classifier checkpoint instead of the cached one")
    p.add_argument("--evaluator-cache-dir")
    p.add_argument("--score-arch", default="lenet", help="independent scorer's arch (default lenet)")
    p.add_argument("--mse-weight", type=float, default=1.0, help="weight of the MSE term (default 1)")
    p.add_argument("--ce-weight", type=float, default=1.0,
                   help="weight of the CE term (default 1, the paper's loss; 0: pure MSE, deep JSCC's objective)")
    p.add_argument("--mse-space", default="standardized", choices=("standardized", "unit"),
                   help="MSE of z-scored pixels (default) or of [0, 1] pixels")
    p.add_argument("--out", required=True, help="output folder (model.pt, eval.csv, history.json, result.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its last finished epoch (same training settings)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from psfl.central.train import CentralConfig, format_central_table, run_central
    from psfl.models import parse_ratio

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.max_samples is not None and args.max_samples < 1:
        raise PsflError(f"--max-samples must be >= 1, got {args.max_samples}")
    cfg = CentralConfig(
        model=args.model, dataset=args.dataset,
        bandwidth_ratio=parse_ratio(args.bandwidth_ratio, "--bandwidth-ratio") if args.bandwidth_ratio else None,
        source=args.source, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, lr_schedule=args.lr_schedule, optimizer=args.optimizer, weight_decay=args.weight_decay,
        train_snr_db=args.snr, channel=args.channel, test_snr_db=tuple(args.test_snr),
        eval_samples=args.eval_samples, max_samples=args.max_samples, seed=args.seed,
        evaluator_arch=args.evaluator_arch, evaluator_epochs=args.evaluator_epochs,
        evaluator_checkpoint=args.evaluator_checkpoint, evaluator_cache_dir=args.evaluator_cache_dir,
        score_arch=args.score_arch, mse_weight=args.mse_weight, mse_space=args.mse_space, ce_weight=args.ce_weight,
        device=args.device,
    )
    print(format_central_table(run_central(cfg, args.out, progress=not args.no_progress, resume=args.resume)))
    return 0

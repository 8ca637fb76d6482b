"""`psfl transmit`: push images through a trained SC model, write original | reconstruction."""
from __future__ import annotations

import argparse

from psfl.cli import add_device_argument, command


@command("transmit", help="Transmit images through a trained SC model; PNG grid + PSNR/SSIM/prediction")
def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model.pt written by `psfl train`, or a folder: a federated run "
                   "(its global model, global_model.pt) or a `psfl train` output")
    p.add_argument("--dataset", help="dataset to take --index samples from (default: the model's)")
    p.add_argument("--index", type=int, nargs="+", default=[], metavar="I", help="sample indices")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--image", nargs="+", default=[], metavar="FILE", help="PNG/JPEG files")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--source", default="auto")
    p.add_argument("--snr", type=float, default=10.0, help="SNR in dB (default 10)")
    p.add_argument("--channel", help="awgn | rayleigh | rician (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluator-arch", default="lenet",
                   help="classifier that names the reconstructions (default lenet: the independent scorer)")
    p.add_argument("--evaluator-seed", type=int, default=1)
    p.add_argument("--evaluator-epochs", type=int, default=3)
    p.add_argument("--evaluator-checkpoint")
    p.add_argument("--evaluator-cache-dir")
    p.add_argument("--out", default="transmit.png", help="PNG grid (default transmit.png)")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from psfl.config import SNR_RANGE
    from psfl.utils.errors import PsflError
    from psfl.evaluate.transmit import transmit_checkpoint

    if not SNR_RANGE[0] <= args.snr <= SNR_RANGE[1]:  # also false for nan
        raise PsflError(f"--snr {args.snr}: must lie within {SNR_RANGE[0]:g}..{SNR_RANGE[1]:g} dB")

    r, path = transmit_checkpoint(
        args.checkpoint, args.snr, args.out, dataset=args.dataset, indices=args.index, split=args.split,
        images=args.image, channel=args.channel, source=args.source, data_dir=args.data_dir, seed=args.seed,
        evaluator_arch=args.evaluator_arch, evaluator_checkpoint=args.evaluator_checkpoint,
        evaluator_cache_dir=args.evaluator_cache_dir, device=args.device, evaluator_seed=args.evaluator_seed,
        evaluator_epochs=args.evaluator_epochs)
    print(f"{'image':<26} {'PSNR (dB)':>9} {'SSIM':>6}  {'predicted':<16} {'conf':>5}  true label")
    for i in range(len(r.names)):
        print(f"{r.names[i]:<26} {r.psnr[i]:>9.2f} {r.ssim[i]:>6.3f}  {r.class_name(r.predicted[i]):<16} "
              f"{r.confidence[i]:>5.2f}  {r.class_name(r.labels[i])}")
    print(f"grid (original | reconstruction) at {args.snr:g} dB: {path}")
    return 0

"""`psfl pretrain`: MAE masked-autoencoder pre-training of a GSC preset; writes a
checkpoint that initialises a mentor (``psfl.models.load_model_checkpoint``)."""
from __future__ import annotations

import argparse
import json

from psfl.cli import add_device_argument, command


@command("pretrain", help="Pre-train a GSC preset as a masked autoencoder (MAE) and save a mentor checkpoint")
def configure(p: argparse.ArgumentParser) -> None:
    from psfl.config import PretrainConfig

    d = PretrainConfig()
    p.add_argument("--model", default=d.model, help="GSC preset (see `psfl models`)")
    p.add_argument("--bandwidth-ratio", default=d.bandwidth_ratio, metavar="K/N",
                   help="k/n of the mentor, as model.bandwidth_ratio of the runs it will serve (default: the preset's)")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--source", default=d.source, help="auto / npz / bundled / torchvision")
    p.add_argument("--data-dir", help="folder with {dataset}.npz (Keras layout)")
    p.add_argument("--max-train", type=int, default=d.max_train, help="first N training images (0: all)")
    p.add_argument("--mask-ratio", type=float, default=d.mask_ratio)
    p.add_argument("--norm-pix-loss", action="store_true", help="MSE against per-patch normalised pixels")
    p.add_argument("--snr-db", type=float, default=None,
                   help="pre-train through the model's channel at this SNR (default: noiseless link)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--steps", type=int, default=d.steps, help="> 0: stop after this many steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    add_device_argument(p, d.device)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from psfl.central.pretrain import PretrainConfig, pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(model=args.model, bandwidth_ratio=args.bandwidth_ratio, dataset=args.dataset, source=args.source, data_dir=args.data_dir,
                         max_train=args.max_train, mask_ratio=args.mask_ratio, norm_pix_loss=args.norm_pix_loss,
                         snr_db=args.snr_db, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                         out=args.out)
    log = None if args.json else (lambda e: print(f"step {e['step']:>6.0f}  loss {e['loss']:.5f}  lr {e['lr']:.2e}"))
    result = pretrain(cfg, log=log)
    if args.json:
        print(json.dumps({"final": result.final, "checkpoint": str(result.checkpoint)}, indent=2))
    else:
        f = result.final
        print(f"held-out masked-patch MSE {f['masked_mse']:.5f}, full reconstruction MSE {f['full_mse']:.5f}, "
              f"{f['samples_per_s']:.0f} samples/s")
        print(f"checkpoint: {result.checkpoint}")
    return 0

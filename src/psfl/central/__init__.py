"""Central (non-federated) training of one SC model (core, top): supervised training
with accuracy, PSNR and SSIM against test SNR (:mod:`psfl.central.train`, ``psfl train``)
and MAE masked-autoencoder pre-training of a GSC mentor (:mod:`psfl.central.pretrain`,
``psfl pretrain``). It may import every other core package (``psfl.config`` included) and
nothing of methods, runners, experiments or the CLI."""

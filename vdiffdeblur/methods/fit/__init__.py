"""Deblurring by fitting to test data (Ren, Qian & Chen; ``shared/papers/fit_to_test_data.md``).

No training set: a small U-Net (:class:`~vdiffdeblur.models.fit_unet.FitUNet`) is fitted to the sharp frames
of the very video it then deblurs (:class:`~.deblurrer.FitToTestDeblurrer`, settings in :class:`~.config.FitConfig`).

1. Frame selection (:mod:`.scan`): the sharpest frame (highest variance of the Laplacian, M_VL) in every 20.
2. Blur generation (:mod:`.patches`): random patches of those frames (no flips or rotations; ``patch_size``
   capped by the frame size) blurred on the fly by random motion kernels in linear light (inverse gamma, blur,
   gamma), plus the video's own sensor-noise level.
3. Loss: the perceptual loss (eq. 2; a pixel loss without VGG weights), optionally re-weighted by the
   patch's M_VL / N (eq. 3), optionally plus a WGAN-GP PatchGAN critic.
4. Every frame is then deblurred, in small batches, streaming for long videos (:mod:`.stream` for the CLI).

Two additions keep frames that are not blurred as they are, since a fitted U-Net otherwise invents contrast
on them:

- *kernel lengths matched to the video* (:mod:`.blur_lengths`): each frame's blur length is estimated by
  comparing its M_VL with the M_VL of its reference sharp frame blurred by known kernels; the training
  kernels follow the lengths actually present, with a share of near-zero lengths, so the network learns to
  leave sharp input alone;
- *per-frame strength*: after fitting, the best share of the predicted change is measured as a function of
  blur length on held-out synthetic pairs, and each frame gets the share that matches its estimated blur
  (zero for frames estimated sharp: those come out unchanged, bit for bit).

The fit starts from the shipped MAML initialisation (:mod:`.initialisation`); :mod:`.threads` picks its CPU
threads and :mod:`.psnr` measures a fit network's own output. Options that are the paper's ablations:
``kernel`` (symmetric / asymmetric / simulated), ``reweight``, ``inverse_gamma``, ``critic``. Post-processing
(paper section IV-E): :meth:`~.deblurrer.FitToTestDeblurrer.postprocess` takes another method's result as its
input video. The defaults and the measurements behind them: docs/fit.md.
"""

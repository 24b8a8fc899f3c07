"""The text of a report: the loss paragraph (built from the run's resolved config), split rationale, references."""

from __future__ import annotations

QUANTIZER_LOSS = {
    "vq": "codebook loss ||sg[z_e] - e||² plus beta times the commitment loss ||z_e - sg[e]||² "
          "(straight-through gradients) [1]",
    "ema": "beta times the commitment loss only; the codebook follows an exponential moving average of "
           "the encoder outputs assigned to each code [2]",
    "rq": "commitment losses of every residual level; codebooks updated by EMA [6]",
    "fsq": "none: finite scalar quantisation has an implicit, fixed codebook [7]",
    "lfq": "commitment loss plus an entropy term that spreads codes over the binary codebook [8]",
    "soft": "codebook and commitment losses on a softmax-weighted (soft) assignment during training; "
            "hard nearest-code assignment at evaluation",
    "monai-ema": "MONAI's EMAQuantizer: beta times the commitment loss; the codebook follows an exponential moving "
                 "average (decay 0.5) of the encoder outputs assigned to each code [2, 5]",
}

SPLIT_RATIONALE = (
    "Splits are **by patient** (HipMRI ships them that way): every slice of a patient, all weekly scans "
    "included, sits in one split, so no anatomy seen in training is scored at test time; slices of one "
    "patient are strongly correlated and a slice-level split would inflate every metric. The validation "
    "split only drives early stopping and the choice of `best.pt`; the test split is used once, by "
    "`prostate-vq evaluate`."
)

REFERENCES = [
    ("vq", "A. van den Oord, O. Vinyals, K. Kavukcuoglu. *Neural Discrete Representation Learning.* "
           "NeurIPS 2017. arXiv:1711.00937"),
    ("ema", "A. Razavi, A. van den Oord, O. Vinyals. *Generating Diverse High-Fidelity Images with "
            "VQ-VAE-2.* NeurIPS 2019. arXiv:1906.00446"),
    ("ssim", "Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. *Image quality assessment: from error "
             "visibility to structural similarity.* IEEE TIP 13(4), 2004."),
    ("data", "J. Dowling, P. Greer. *Labelled weekly MR images of the male pelvis* (HipMRI). CSIRO Data "
             "Access Portal, 2021. doi:10.25919/45t8-p065"),
    ("monai", "M. J. Cardoso et al. *MONAI: An open-source framework for deep learning in healthcare.* "
              "arXiv:2211.02701, 2022."),
    ("rq", "D. Lee, C. Kim, S. Kim, M. Cho, W.-S. Han. *Autoregressive Image Generation using Residual "
           "Quantization.* CVPR 2022. arXiv:2203.01941"),
    ("fsq", "F. Mentzer, D. Minnen, E. Agustsson, M. Tschannen. *Finite Scalar Quantization: VQ-VAE Made "
            "Simple.* ICLR 2024. arXiv:2309.15505"),
    ("lfq", "L. Yu et al. *Language Model Beats Diffusion: Tokenizer is Key to Visual Generation.* "
            "ICLR 2024. arXiv:2310.05737"),
    ("stop", "L. Prechelt. *Early Stopping - But When?* In: Neural Networks: Tricks of the Trade, "
             "Springer, 1998."),
    ("vqlib", "P. Wang (lucidrains). *vector-quantize-pytorch.* "
              "https://github.com/lucidrains/vector-quantize-pytorch"),
]


def _weight(section: dict, key: str, default: float) -> float:
    try:
        return float(section.get(key, default))
    except (TypeError, ValueError):
        return default


def loss_text(task: str, config: dict) -> str:
    """The **Loss.** paragraph of one run from its resolved config: every term of the task loss with the weight it
    trained with (training.l1_weight, ssim_weight, seg_weight, dice_weight), the quantiser's terms (beta, entropy
    weight), and what shapes the input (augmentation, masking): a fixed sentence misstated presets such as default,
    whose loss adds 1 x (1 - SSIM)."""
    training, quantizer = config.get("training") or {}, config.get("quantizer") or {}
    terms = []
    if task in ("image", "joint"):
        terms.append("mean squared error between the reconstruction and the input slice (both in [0, 1])")
        if _weight(training, "l1_weight", 0.0):
            terms.append(f"{_weight(training, 'l1_weight', 0.0):g} x the mean absolute error (L1)")
        if _weight(training, "ssim_weight", 0.0):
            terms.append(f"{_weight(training, 'ssim_weight', 0.0):g} x (1 - SSIM) (the metric's 11x11 Gaussian window)")
    if task in ("mask", "joint"):
        seg, dice = _weight(training, "seg_weight", 1.0), _weight(training, "dice_weight", 1.0)
        terms.append(f"{seg:g} x cross-entropy on the {'segmentation head' if task == 'joint' else 'label map'}")
        if dice:
            terms.append(f"{seg * dice:g} x MONAI's soft Dice loss (foreground classes)")
    kind = str(quantizer.get("kind", "vq"))
    weights = [f"{name} {quantizer[key]:g}" for key, name in (("beta", "beta"), ("entropy_weight", "entropy weight"))
               if isinstance(quantizer.get(key), (int, float)) and quantizer.get(key) and kind != "fsq"]
    text = (" + ".join(terms) or task) + "; plus the quantiser's terms: " + QUANTIZER_LOSS.get(kind, kind)
    text += f" ({', '.join(weights)})." if weights else "."
    shaping = []
    if training.get("augment") is True:
        shaping.append("training batches are augmented (flips, small affine, intensity)")
    if _weight(training, "mask_ratio", 0.0):
        shaping.append(f"{_weight(training, 'mask_ratio', 0.0):.0%} of the input patches are masked")
    return text + (" Input: " + "; ".join(shaping) + "." if shaping else "")


"""The text of a report: the loss paragraph (built from the run's resolved config) and the split rationale.
A quantizer's own terms are its class's `loss_text` (models.quantizers), cited by its `references`."""

from __future__ import annotations

from prostate_vq.models.quantizers import QUANTIZERS

SPLIT_RATIONALE = (
    "Splits are **by patient** (HipMRI ships them that way): every slice of a patient, all weekly scans "
    "included, sits in one split, so no anatomy seen in training is scored at test time; slices of one "
    "patient are strongly correlated and a slice-level split would inflate every metric. The validation "
    "split only drives early stopping and the choice of `best.pt`; the test split is used once, by "
    "`prostate-vq evaluate`."
)


def _weight(section: dict, key: str, default: float) -> float:
    try:
        return float(section.get(key, default))
    except (TypeError, ValueError):
        return default


def loss_text(task: str, config: dict, cite=None) -> str:
    """The **Loss.** paragraph of one run from its resolved config: every term of the task loss with the weight it
    trained with (training.l1_weight, ssim_weight, seg_weight, dice_weight), the quantiser's terms (beta, entropy
    weight), and what shapes the input (augmentation, masking): a fixed sentence misstated presets such as default,
    whose loss adds 0.3 x (1 - SSIM). `cite(*keys)` (references.Citations.cite) numbers the quantiser's
    references; a kind no longer registered (an old run's) is named as it is."""
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
    cls = QUANTIZERS.get(kind)
    weighted = cls.loss_weights if cls is not None else ()
    weights = [
        f"{key.replace('_', ' ')} {quantizer[key]:g}"
        for key in weighted
        if isinstance(quantizer.get(key), (int, float)) and quantizer.get(key)
    ]
    own = f"{cls.loss_text} {cite(*cls.references)}" if cls is not None and cite else cls.loss_text if cls else kind
    text = (" + ".join(terms) or task) + "; plus the quantiser's terms: " + own
    text += f" ({', '.join(weights)})." if weights else "."
    shaping = []
    if training.get("augment") is True:
        shaping.append("training batches are augmented (flips, small affine, intensity)")
    if _weight(training, "mask_ratio", 0.0):
        shaping.append(f"{_weight(training, 'mask_ratio', 0.0):.0%} of the input patches are masked")
    return text + (" Input: " + "; ".join(shaping) + "." if shaping else "")

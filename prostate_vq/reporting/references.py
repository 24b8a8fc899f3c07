"""The report's references, cited by key: `Citations.cite("ssim")` gives "[n]", numbered in order of first
citation, and the references section lists what was cited in that order. Numbers typed by hand depended on the
order of a list; a key cannot point at the wrong paper when the list changes. Each quantizer's papers come from
its class (`Quantizer.references`, `Quantizer.citations`), so a new kind brings its own."""

from __future__ import annotations

from prostate_vq.models.quantizers import QUANTIZERS

GENERAL = {
    "ssim": "Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. *Image quality assessment: from error "
    "visibility to structural similarity.* IEEE TIP 13(4), 2004.",
    "data": "J. Dowling, P. Greer. *Labelled weekly MR images of the male pelvis* (HipMRI). CSIRO Data "
    "Access Portal, 2021. doi:10.25919/45t8-p065",
    "monai": "M. J. Cardoso et al. *MONAI: An open-source framework for deep learning in healthcare.* arXiv:2211.02701, 2022.",
    "stop": "L. Prechelt. *Early Stopping - But When?* In: Neural Networks: Tricks of the Trade, Springer, 1998.",
    "vqlib": "P. Wang (lucidrains). *vector-quantize-pytorch.* https://github.com/lucidrains/vector-quantize-pytorch",
}
# Listed after the cited ones even when the text cites them nowhere: the data and the software every run uses.
ALWAYS = ("data", "vqlib")


def bibliography() -> dict[str, str]:
    """key -> full reference: the general ones and every registered quantizer's."""
    table = dict(GENERAL)
    for cls in QUANTIZERS.values():
        for base in reversed(cls.__mro__):
            table.update(vars(base).get("citations", {}))
    return table


class Citations:
    """Numbers in order of first citation; `section()` is the numbered list."""

    def __init__(self) -> None:
        self.table = bibliography()
        self.order: list[str] = []

    def cite(self, *keys: str) -> str:
        """ "[2]" or "[2, 5]"; a key with no reference is a bug in the caller or a quantizer, refused here."""
        unknown = [key for key in keys if key not in self.table]
        if unknown:
            raise KeyError(f"no reference for citation key(s) {', '.join(unknown)}")
        for key in keys:
            if key not in self.order:
                self.order.append(key)
        return "[" + ", ".join(str(self.order.index(key) + 1) for key in keys) + "]"

    def section(self) -> list[str]:
        keys = self.order + [key for key in ALWAYS if key not in self.order]
        return [f"{i}. {self.table[key]}" for i, key in enumerate(keys, 1)]

"""Import the HipMRI 3D release in one command: every MR volume of ``semantic_MRs/`` with its label volume
from ``semantic_labels_only/``, written as slices with masks into the HipMRI slice layout.

Names: ``Case_004_Week0_LFOV.nii.gz`` / ``B006_Week0_LFOV.nii.gz`` (MR) pair with
``Case_004_Week0_SEMANTIC_LFOV.nii.gz`` / ``B006_Week0_SEMANTIC.nii.gz`` (labels). Splits are by patient:
a case that the slice release (``keras_slices_data/`` beside the 3D folders) places in a split keeps that
split; the other cases get a seeded patient split. ``import_plan.csv`` in the output records each volume's
case, week, split and where the split came from.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from prostate_vq.data.layout import discover, present_splits, resolve_root
from prostate_vq.errors import DataError, UserInputError
from prostate_vq.files import write_text_atomic

MR_FOLDER, LABEL_FOLDER = "semantic_MRs", "semantic_labels_only"
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)
_NAME = re.compile(r"^(?:case_)?(?P<case>[a-z]*\d+)_week(?P<week>\d+)(?P<rest>_.*)?\.nii(?:\.gz)?$", re.IGNORECASE)


def parse_volume_name(path: Path) -> tuple[str, int, bool]:
    """(case, week, is_label) of a 3D release file name; DataError for anything else."""
    match = _NAME.match(path.name)
    if match is None:
        raise DataError("not a HipMRI 3D volume name (expected e.g. Case_004_Week0_LFOV.nii.gz)", path)
    case = match["case"].upper() if match["case"][0].isalpha() else match["case"]
    return case, int(match["week"]), "SEMANTIC" in (match["rest"] or "").upper()


def pair_volumes(mr_dir: Path, label_dir: Path) -> list[tuple[str, int, Path, Path]]:
    """(case, week, MR, labels) for every MR volume; an MR without labels is an error naming it."""
    labels = {}
    for path in sorted(label_dir.glob("*.nii*")):
        case, week, _ = parse_volume_name(path)
        labels[(case, week)] = path
    pairs = []
    for path in sorted(mr_dir.glob("*.nii*")):
        case, week, is_label = parse_volume_name(path)
        if is_label:
            continue
        if (case, week) not in labels:
            raise DataError(f"no label volume for case {case} week {week} in {label_dir.name}/", path)
        pairs.append((case, week, path, labels[(case, week)]))
    if not pairs:
        raise DataError("no MR volumes (*.nii.gz) found", mr_dir)
    return pairs


def release_splits(root: Path) -> dict[str, str]:
    """case -> split of the slice release beside the 3D folders ({} when there is none)."""
    slices = resolve_root(root)
    if not present_splits(slices):
        return {}
    found = discover(slices, present_splits(slices))
    return {
        record.case.upper() if record.case[0].isalpha() else record.case: split
        for split, records in found.items()
        for record in records
    }


def import_hipmri_3d(root, out, fractions=DEFAULT_FRACTIONS, seed: int = 0, orientation: str = "RAS") -> Path:
    """Import `root`/semantic_MRs with `root`/semantic_labels_only into the slice layout at `out`."""
    from prostate_vq.data.importer import import_volume
    from prostate_vq.data.manifest import split_cases

    root = Path(root).expanduser()
    mr_dir, label_dir = root / MR_FOLDER, root / LABEL_FOLDER
    for folder in (mr_dir, label_dir):
        if not folder.is_dir():
            raise UserInputError(f"missing {folder.name}/ (the HipMRI 3D release has {MR_FOLDER}/ and {LABEL_FOLDER}/)", folder)
    pairs = pair_volumes(mr_dir, label_dir)
    known = release_splits(root)
    others = sorted({case for case, *_ in pairs if case not in known})
    seeded = split_cases(others, fractions, seed) if others else {}
    plan = []
    for case, week, mr, labels in pairs:
        split = known.get(case) or seeded[case]
        source = (
            "slice release"
            if case in known
            else f"seeded patient split (seed {seed}, fractions {' '.join(str(f) for f in fractions)})"
        )
        plan.append((case, week, split, source, mr, labels))
    for case, week, split, _, mr, labels in plan:
        import_volume(mr, out, case=case, split=split, week=week, seg=labels, orientation=orientation)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "week", "split", "split_source", "mr", "labels"])
    writer.writerows([(c, w, s, src, m.name, lab.name) for c, w, s, src, m, lab in plan])
    return write_text_atomic(Path(out) / "import_plan.csv", buffer.getvalue())

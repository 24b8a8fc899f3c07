"""The real-scan benchmark data: the two ProstateX patients of ``../shared/data/prostatex-dev`` (T2 DICOM),
imported with ``prostate_vq.data.import_volume`` into a HipMRI-layout root, split by patient:

  ProstateX-0000 t2-tra, t2-sag           -> train    (case 0000, weeks 0-1: 38 slices)
  ProstateX-0000 t2-cor                   -> validate (case 0000v: 15 slices of the training patient in a
                                             plane it was not trained on, so no test anatomy steers
                                             early stopping or best.pt; the importer keeps a case id in
                                             one split, hence the suffix)
  ProstateX-0001 t2-tra-a, t2-tra-b,
                 t2-sag, t2-cor           -> test     (case 0001, weeks 0-3: 72 slices of an unseen patient)

``--direction reverse`` (leave-one-patient-out the other way) swaps the patients: train on 0001 (t2-tra-a,
t2-tra-b, t2-sag: 57 slices), validate on its coronal series (case 0001v, 15 slices), test on all three series of
0000 (case 0000, weeks 0-2: 53 slices).

Every series keeps its acquired plane (``orientation``), so the slices are the scanner's own.
The scans are CC BY 3.0 (see their README); they are read from ``../shared`` and never copied into the repo.
"""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prostatex-dev"

# (series folder, case, split, week, orientation that keeps the acquired plane)
PLAN = [
    ("ProstateX-0000/t2-tra", "0000", "train", 0, "RAS"),
    ("ProstateX-0000/t2-sag", "0000", "train", 1, "ASR"),
    ("ProstateX-0000/t2-cor", "0000v", "validate", 0, "RSA"),
    ("ProstateX-0001/t2-tra-a", "0001", "test", 0, "RAS"),
    ("ProstateX-0001/t2-tra-b", "0001", "test", 1, "RAS"),
    ("ProstateX-0001/t2-sag", "0001", "test", 2, "ASR"),
    ("ProstateX-0001/t2-cor", "0001", "test", 3, "RSA"),
]
REVERSE = [
    ("ProstateX-0001/t2-tra-a", "0001", "train", 0, "RAS"),
    ("ProstateX-0001/t2-tra-b", "0001", "train", 1, "RAS"),
    ("ProstateX-0001/t2-sag", "0001", "train", 2, "ASR"),
    ("ProstateX-0001/t2-cor", "0001v", "validate", 0, "RSA"),
    ("ProstateX-0000/t2-tra", "0000", "test", 0, "RAS"),
    ("ProstateX-0000/t2-sag", "0000", "test", 1, "ASR"),
    ("ProstateX-0000/t2-cor", "0000", "test", 2, "RSA"),
]
PLANS = {"forward": PLAN, "reverse": REVERSE}


def available(shared: Path = SHARED) -> bool:
    return all((shared / folder).is_dir() for folder, *_ in PLAN)


def import_prostatex(root: Path, shared: Path = SHARED, direction: str = "forward") -> Path:
    """Import the plan of ``direction`` (``forward``: test patient 0001; ``reverse``: test 0000) into `root` once
    (a complete import is reused); returns `root`."""
    import warnings

    from prostate_vq.data import import_volume

    marker = root / ".complete"
    if marker.is_file():
        return root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the orientation choice is deliberate
        for folder, case, split, week, orientation in PLANS[direction]:
            import_volume(shared / folder, root, case=case, split=split, week=week, orientation=orientation)
    marker.write_text(
        "\n".join(f"{f} -> {s} case {c} week {w} ({o})" for f, c, s, w, o in PLANS[direction]) + "\n", encoding="utf-8"
    )
    return root

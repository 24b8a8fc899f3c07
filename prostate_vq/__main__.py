"""`python -m prostate_vq` (what torchrun launches) is the same as the `prostate-vq` command."""

from prostate_vq.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

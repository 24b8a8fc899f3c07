"""Command line: parses arguments and calls the library. No logic lives here.

Every verb imports its module lazily so that `prostate-vq presets` answers at once. Bad input
(`UserInputError`) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path

from prostate_vq import __version__
from prostate_vq.data.layout import TASKS
from prostate_vq.errors import UserInputError
from prostate_vq.schema import DEFAULT_SPATIAL_SIZE


def _spatial(parser: argparse.ArgumentParser, default=None) -> None:
    parser.add_argument(
        "--spatial-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=default,
        help="slice size the model sees (default: 256 128, or the checkpoint's)",
    )


def _out_path(text: str) -> Path | str:
    """--out as a Path; an empty one stays "" for `_check_options` to refuse (Path("") is the current folder, and
    a run would write its files beside the user's)."""
    return Path(text) if text.strip() else ""


def _data(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        default=None,
        help="HipMRI root with keras_slices_* folders (default: the built-in demo phantom)",
    )


# --- data -----------------------------------------------------------------------------------


def cmd_synth(args):
    from prostate_vq.data.phantom import synthesize

    root = synthesize(args.out, cases=args.cases, seed=args.seed, slices_per_volume=args.slices, weeks=args.weeks)
    print(f"demo phantom written to {root}")


def cmd_manifest(args):
    from prostate_vq.data.manifest import manifest_command

    return manifest_command(args.data, args.out, check=args.check, resplit=args.resplit, seed=args.seed)


def cmd_import(args):
    from prostate_vq.data.hipmri3d import MR_FOLDER, import_hipmri_3d
    from prostate_vq.data.importer import import_volume

    if (args.path / MR_FOLDER).is_dir():  # the HipMRI 3D release: every volume with its labels
        plan = import_hipmri_3d(args.path, args.out, seed=args.seed, orientation=args.orientation)
        print(f"imported the 3D release into {args.out}; volumes, splits and their source: {plan}")
        return
    if args.case is None or args.split is None:
        raise UserInputError(f"--case and --split are required for one volume ({args.path} holds no {MR_FOLDER}/)")
    written = import_volume(
        args.path, args.out, case=args.case, split=args.split, week=args.week, seg=args.seg, orientation=args.orientation
    )
    print(f"wrote {len(written)} slices ({written[0].name} ... {written[-1].name}) into {written[0].parent}")


# --- models ---------------------------------------------------------------------------------


def cmd_presets(args):
    from prostate_vq.models.presets import list_presets, preset_bits_per_pixel

    if args.show:
        return _show_preset(args.show, args.set)
    rows = list_presets()
    width = max(len(name) for name, _ in rows)
    print(f"{'preset':<{width}}  {'bpp':>6}  description (bpp: bits per pixel at 256x128, after ReFiT where the preset has it)")
    for name, description in rows:
        print(f"{name:<{width}}  {preset_bits_per_pixel(name):>6.4g}  {description}")


def _show_preset(name: str, overrides) -> None:
    """The resolved configuration (engine defaults filled in) as YAML, headed by its rate."""
    import yaml

    from prostate_vq.files import plain
    from prostate_vq.models.presets import apply_overrides, config_bits_per_pixel, get_preset

    cfg = apply_overrides(get_preset(name), overrides)  # every section's defaults filled in
    h, w = cfg["training"]["spatial_size"]
    refit = " after ReFiT" if (cfg.get("refit") or {}).get("codebook_size") else ""
    print(f"# {name}: {config_bits_per_pixel(cfg, (h, w)):.4g} bits per pixel at {h}x{w}{refit}")
    print(yaml.safe_dump(plain(cfg), sort_keys=False), end="")


def cmd_summary(args):
    from prostate_vq.models.summary import model_summary

    print(
        model_summary(
            args.preset, spatial_size=tuple(args.spatial_size or DEFAULT_SPATIAL_SIZE), task=args.task, overrides=args.set
        )
    )


# --- training -------------------------------------------------------------------------------


def _train_options(args):
    """How the run runs: the runtime options (data, folder, device, time budget, --resume, workers...)."""
    from prostate_vq.training import TrainOptions

    return TrainOptions(
        data=args.data,
        out=args.out,
        max_minutes=args.max_minutes,
        device=args.device,
        resume=args.resume,
        max_slices=args.max_slices,
        num_workers=args.num_workers,
        compile=args.compile,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )


def _run_request(args):
    """What the run trains, as given: a --config file is read where the run's config is resolved
    (training.config.resolve), so `train(options, RunRequest(config_file=...))` from Python follows it the same way."""
    from prostate_vq.training import RunRequest

    return RunRequest(
        preset=args.preset,
        config_file=args.config,
        task=args.task,
        seed=args.seed,
        overrides=list(args.set or []),
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        monitor=args.monitor,
        mask_ratio=args.mask_ratio,
        spatial_size=tuple(args.spatial_size) if args.spatial_size else None,
    )


def cmd_train(args):
    from prostate_vq.errors import TrainingDiverged
    from prostate_vq.training import train

    try:
        run = train(_train_options(args), _run_request(args))
    except TrainingDiverged as error:
        print(f"prostate-vq train: stopped: {error}", file=sys.stderr)
        return 1
    if run is not None:
        print(f"run written to {run}")


def cmd_refit(args):
    from prostate_vq.training.refit import refit

    run = refit(
        args.checkpoint,
        out=args.out,
        codebook_size=args.codebook_size,
        data=args.data,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )
    if run is not None:  # under torchrun only rank 0 reports the run (as train)
        print(f"ReFiT run written to {run}")


# --- evaluation and reports -----------------------------------------------------------------


def cmd_evaluate(args):
    from prostate_vq.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        out=args.out,
        device=args.device,
        batch_size=args.batch_size,
        max_slices=args.max_slices,
        codecs=args.codecs,
        codec_bits_per_pixel=args.codec_bpp,
        lpips_weights=args.lpips_weights,
        fid_weights=args.fid_weights,
    )
    print(result.summary_table())
    print(f"metrics written to {Path(args.out) / 'metrics.json'}")


def cmd_report(args):
    from prostate_vq.reporting.markdown import write_report

    path = write_report(args.inputs, args.out, title=args.title)
    print(f"report written to {path}")


def cmd_sweep(args):
    from prostate_vq.workflows import sweep

    kwargs = {}
    for name in ("max_steps", "seeds", "grid", "reference", "study", "set", "codecs"):
        value = getattr(args, name)
        if value:
            kwargs["overrides" if name == "set" else name] = value
    if args.shard:
        kwargs["shard_spec"] = args.shard
    if args.collect:
        kwargs["collect_only"] = True
    if args.tensorboard:
        kwargs["tensorboard"] = True
    for name in ("lpips_weights", "fid_weights"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    path = sweep(
        data=args.data,
        presets=[p for p in (args.presets or "").split(",") if p],
        out=args.out,
        max_minutes=args.max_minutes,
        task=args.task,
        epochs=args.epochs,
        device=args.device,
        seed=args.seed,
        spatial_size=tuple(args.spatial_size) if args.spatial_size else None,
        max_slices=args.max_slices,
        **kwargs,
    )
    print(f"sweep report written to {path}")


def cmd_studies(args):
    from prostate_vq.workflows import list_studies

    print(list_studies())


def cmd_demo(args):
    from prostate_vq.workflows import demo

    extra = {"compile": True} if args.compile else {}
    path = demo(out=args.out, minutes=args.minutes, device=args.device, seed=args.seed, **extra)
    print(f"demo report: {path}")


def cmd_export(args):
    from prostate_vq.export import export_checkpoint

    out, notes = export_checkpoint(args.checkpoint, args.out, fmt=args.format, metrics=args.metrics)
    for line in notes:
        print(f"prostate-vq export: note: {line}", file=sys.stderr)
    print(f"export ({args.format}) written to {out}")


# --- generative prior -----------------------------------------------------------------------


def cmd_train_prior(args):
    from prostate_vq.prior.train import train_prior

    run = train_prior(
        args.checkpoint,
        data=args.data,
        out=args.out,
        arch=args.arch,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        device=args.device,
        seed=args.seed,
        resume=args.resume,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        max_slices=args.max_slices,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )
    print(f"prior run written to {run}")


def cmd_sample(args):
    from prostate_vq.prior.sample import sample

    out = sample(
        args.prior,
        n=args.n,
        out=args.out,
        temperature=args.temperature,
        seed=args.seed,
        device=args.device,
        data=args.data,
        fid_weights=args.fid_weights,
    )
    print(f"{args.n} samples written to {out}")


def cmd_encode(args):
    if args.compress is not None:
        from prostate_vq.prior.compress import compress_dataset

        rates = compress_dataset(args.checkpoint, args.compress, data=args.data, split=args.split, out=args.out)
        print(
            f"codes entropy-coded under the prior written to {args.out}: "
            f"{rates['coded_bits_per_pixel']:.4f} bits per pixel coded (prior NLL "
            f"{rates['nll_bits_per_pixel']:.4f}, nominal {rates['nominal_bits_per_pixel']:.4f}, whole file "
            f"{rates['file_bits_per_pixel']:.4f})"
        )
        print(json.dumps(rates))
        return
    from prostate_vq.prior.codes import encode_dataset

    path = encode_dataset(args.checkpoint, data=args.data, split=args.split, out=args.out, device=args.device)
    print(f"codes written to {path}")


def cmd_decode(args):
    from prostate_vq.prior.compress import decode_dataset

    path = decode_dataset(args.codes, args.prior, args.out)
    print(f"decoded codes written to {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prostate-vq", description="VQ-VAE variants for 2D prostate MRI slices (HipMRI): train, evaluate, report."
    )
    parser.add_argument("--version", action="version", version=f"prostate-vq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write the deterministic demo phantom in HipMRI layout")
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--cases", type=int, default=12, help="number of patients (split by patient)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=24, help="slices per volume")
    p.add_argument("--weeks", type=int, default=2, help="weekly volumes per patient")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("manifest", help="write (and check) the per-slice manifest of a dataset")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=_out_path, default=None, help="CSV to write")
    p.add_argument("--check", action="store_true", help="exit 2 on leakage, missing masks, bad shapes or labels")
    p.add_argument(
        "--resplit",
        nargs=3,
        type=float,
        metavar=("TRAIN", "VAL", "TEST"),
        default=None,
        help="re-assign splits by patient with these fractions (written to the manifest only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser(
        "import",
        help="import a 3D volume (NIfTI, MHA/MHD, NRRD, DICOM folder), or the whole HipMRI "
        "3D release (a folder with semantic_MRs/ and semantic_labels_only/), as slices",
    )
    p.add_argument("path", type=Path)
    p.add_argument("--out", type=_out_path, required=True, help="HipMRI root to write into")
    p.add_argument("--case", default=None, help="case id (one volume)")
    p.add_argument("--split", choices=("train", "validate", "test"), default=None, help="split (one volume)")
    p.add_argument(
        "--seed", type=int, default=0, help="3D release: seed of the patient split for cases the slice release does not place"
    )
    p.add_argument("--week", type=int, default=0)
    p.add_argument("--seg", type=Path, default=None, help="label volume on the same grid")
    p.add_argument("--orientation", default="RAS", help="reorient to this axis code before slicing (default RAS)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("presets", help="list the model presets, or show one resolved")
    p.add_argument(
        "--show",
        metavar="NAME",
        default=None,
        help="print preset NAME's full configuration (defaults filled in) with its bits per pixel",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides applied before --show")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("summary", help="print the torchinfo summary of a preset")
    p.add_argument("--preset", default="default")
    p.add_argument("--task", choices=TASKS, default="image")
    _spatial(p)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a VQ-VAE preset")
    _data(p)
    p.add_argument("--out", type=_out_path, required=True, help="run folder")
    p.add_argument("--preset", default=None, help="model preset (default: default); not with --config")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a config file: base: PRESET plus model/quantizer/training/refit sections (a run's "
        "config.yaml reproduces it, its data_root too unless --data is given); instead of --preset, "
        "under --set and the options below",
    )
    p.add_argument("--task", choices=TASKS, default=None, help="image, mask or joint (default: image)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this wall-clock budget")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="optimizer-step budget (training.max_steps): the run ends there and the cosine is planned "
        "over it; compare variants at equal steps, not minutes",
    )
    _spatial(p)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="default: 0 (or the --config file's)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    p.add_argument(
        "--monitor",
        choices=("loss", "ssim", "dice"),
        default=None,
        help="validation metric for best.pt and early stopping (default: the preset's, else loss)",
    )
    p.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="share of input patches masked (masked training; default: the preset's, else 0)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override preset fields")
    p.add_argument("--max-slices", type=int, default=None, help="use at most this many slices per split")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to TensorBoard in RUN/tb: scalars, reconstruction grids, code usage, hparams",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("refit", help="ReFiT: k-means re-build of a smaller codebook, then fine-tune")
    p.add_argument("--checkpoint", type=Path, required=True)
    _data(p)
    p.add_argument("--codebook-size", type=int, required=True)
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to TensorBoard in OUT/tb: scalars, reconstruction grids, code usage, hparams",
    )
    p.set_defaults(func=cmd_refit)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint: metrics.json, per_slice.csv, figures")
    p.add_argument("--checkpoint", type=Path, required=True)
    _data(p)
    p.add_argument("--split", choices=("train", "validate", "test"), default="test")
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-slices", type=int, default=None)
    p.add_argument(
        "--codecs",
        default=None,
        metavar="LIST",
        help="also code the same slices at the model's bits per pixel with these codecs and score them "
        "alike: webp,avif,jpeg2000,jpeg (Pillow), jpegxl (imagecodecs)",
    )
    p.add_argument(
        "--codec-bpp",
        type=float,
        default=None,
        metavar="BPP",
        help="the codecs' budget in bits per pixel instead of the model's nominal rate (e.g. the coded "
        "rate `encode --compress` prints)",
    )
    p.add_argument(
        "--lpips-weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="state dict of lpips.LPIPS(net='alex') (safetensors or torch.save): adds LPIPS; never downloaded",
    )
    p.add_argument(
        "--fid-weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="TorchScript feature network ([B, 3, H, W] in [0, 1] -> features): adds rFID; never downloaded",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write one Markdown report from run and evaluation folders")
    p.add_argument("inputs", nargs="+", type=Path, metavar="RUN_OR_EVAL_DIR")
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--title", default="prostate-vq report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export",
        help="export a checkpoint for others: safetensors + config.json + model card, "
        "TorchScript and ONNX of encode/decode, or a MONAI Bundle",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a run's best.pt")
    p.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    p.add_argument(
        "--format",
        choices=("pretrained", "monai-bundle"),
        default="pretrained",
        help="pretrained: model.safetensors, config.json, README.md, encode/decode .ts and .onnx; "
        "monai-bundle: configs/, models/, docs/ as monai.bundle expects",
    )
    p.add_argument(
        "--metrics",
        type=Path,
        default=None,
        help="metrics.json of prostate-vq evaluate for the model card (default: a sweep job's "
        "eval/metrics.json beside the run, if any)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "sweep",
        help="train and evaluate presets x grid x seeds at equal steps, then one "
        "comparison report (mean ± sd over seeds, paired intervals)",
    )
    _data(p)
    p.add_argument("--presets", default=None, help="comma-separated preset names (or --study)")
    p.add_argument(
        "--out",
        type=_out_path,
        required=True,
        help="sweep folder: OUT/<cell>/seed<k>/{run,eval}, sweep.json, results.json, report.md",
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="optimizer steps of every job (compare at equal steps, not minutes)"
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: --seed)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2",
        help="a grid axis over every preset (cartesian; repeat for more axes), e.g. quantizer.codebook_dim=4,8,16",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="PRESET_OR_CELL",
        help="paired differences against this preset (its cell with the same grid values) or cell",
    )
    p.add_argument("--study", default=None, help="run a reference-table study (prostate-vq studies lists them)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every cell")
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only share I of N (0 <= I < N) of the (cell, seed) jobs, e.g. a SLURM array task",
    )
    p.add_argument(
        "--collect", action="store_true", help="train nothing: write the report from the finished jobs, naming the missing ones"
    )
    p.add_argument(
        "--codecs",
        default=None,
        metavar="LIST",
        help="evaluate every job beside these codecs at its rate (webp,avif,jpeg2000,jpeg): "
        "the table adds ours minus the best codec with its interval",
    )
    p.add_argument("--max-minutes", type=float, default=None, help="a wall-clock cap per job (steps stay the budget)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--task", choices=TASKS, default=None, help="image, mask or joint (default: image, or the study's)")
    _spatial(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="the one seed when --seeds is not given")
    p.add_argument("--max-slices", type=int, default=None)
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="log every job to OUT/<cell>/seed<k>/run/tb: tensorboard --logdir OUT compares the cells",
    )
    p.add_argument(
        "--lpips-weights", type=Path, default=None, metavar="FILE", help="as evaluate --lpips-weights, for every job's evaluation"
    )
    p.add_argument(
        "--fid-weights", type=Path, default=None, metavar="FILE", help="as evaluate --fid-weights, for every job's evaluation"
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("studies", help="list the reference-table studies (run one with sweep --study NAME)")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser("demo", help="synth -> train default -> evaluate -> report, on the demo phantom")
    p.add_argument("--out", type=_out_path, default=Path("demo-out"))
    p.add_argument("--minutes", type=float, default=5.0, help="training budget")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-prior", help="train an autoregressive prior over a model's codes")
    p.add_argument("--checkpoint", type=Path, required=True)
    _data(p)
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--arch", choices=("pixelcnn", "transformer"), default="pixelcnn")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-slices", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in OUT/tb (history and hparams)")
    p.set_defaults(func=cmd_train_prior)

    p = sub.add_parser("sample", help="sample new slices from a prior")
    p.add_argument("--prior", type=Path, required=True, help="prior checkpoint (best.pt of train-prior)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    _data(p)
    p.add_argument(
        "--fid-weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="TorchScript feature network: adds FID of the samples against validation slices; never downloaded",
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("encode", help="export the code map of every slice to an .npz")
    p.add_argument("--checkpoint", type=Path, required=True)
    _data(p)
    p.add_argument("--split", choices=("train", "validate", "test"), default="train")
    p.add_argument("--out", type=_out_path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--compress",
        type=Path,
        default=None,
        metavar="PRIOR",
        help="entropy-code the codes under this prior checkpoint (train-prior's best.pt; on the CPU) and "
        "print the coded, prior-NLL and nominal bits per pixel; `decode` restores the codes exactly",
    )
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="restore the codes of an `encode --compress` file exactly (a plain codes .npz)")
    p.add_argument("--codes", type=Path, required=True, help="the entropy-coded .npz")
    p.add_argument("--prior", type=Path, required=True, help="the prior checkpoint it was coded under")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_decode)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Users read warnings (constant slice, codebook collapse) as one line, without our source lines."""
    return f"prostate-vq: warning: {message}\n"


_USER_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EROFS,
    errno.ENOSPC,
    errno.EEXIST,
    errno.ELOOP,
    errno.ENAMETOOLONG,
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (not when the handler was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_to_stderr() -> None:
    """The package's info lines (data folder used, end of training) as plain `prostate-vq: ...` lines."""
    logger = logging.getLogger("prostate_vq")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("prostate-vq: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _is_out_of_memory(error: RuntimeError) -> bool:
    """torch's CPU and CUDA allocators raise RuntimeError (CUDA: its OutOfMemoryError subclass)."""
    text = str(error)
    return type(error).__name__ == "OutOfMemoryError" or "DefaultCPUAllocator" in text or "out of memory" in text


def _check_options(args) -> None:
    """Every verb's numeric options by the config schema's rules (prostate_vq.schema.check_option), before the
    verb runs: `--seed -1`, `--max-minutes nan` or `--temperature inf` is one line naming the flag."""
    from prostate_vq.schema import COMMAND_LINE, FLAG_SECTIONS, check_option

    if getattr(args, "out", None) == "":
        raise UserInputError("--out must name a folder or file, not an empty string (use . for this folder)")
    for name in (*COMMAND_LINE, *FLAG_SECTIONS):
        if getattr(args, name, None) is not None:
            setattr(args, name, check_option(name, getattr(args, name)))


def _symlink_loop(error: BaseException) -> str | None:
    """The path of pathlib's `resolve()` refusal of a symlink loop (a RuntimeError before Python 3.13)."""
    text = str(error)
    if isinstance(error, RuntimeError) and text.startswith("Symlink loop from "):
        return text.removeprefix("Symlink loop from ").strip("'\"")
    return None


class Terminated(Exception):
    """SIGTERM (a scheduler's time limit, `kill`): ends the verb like Ctrl-C does, with a line saying so."""


def _terminate(signum, frame):
    raise Terminated


def _say(command: str, text: str) -> None:
    """One line on stderr; a path that is not UTF-8 is shown escaped, never a UnicodeEncodeError."""
    line = f"prostate-vq {command}: {text}"
    print(line.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    _log_to_stderr()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return _run(args)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        _check_options(args)
        code = args.func(args)
    except UserInputError as error:
        _say(args.command, f"error: {error}")
        return 2
    except KeyboardInterrupt:
        _say(args.command, "interrupted")
        return 130
    except Terminated:
        _say(args.command, "terminated (SIGTERM); finished files are kept, a run continues with --resume")
        return 143
    except (MemoryError, RuntimeError) as error:  # the allocator's refusal of a size the user asked for
        loop = _symlink_loop(error)
        if loop is not None:
            _say(
                args.command,
                f"error: {loop}: a loop of symbolic links (it leads back to itself); point it at a real folder or file",
            )
            return 2
        if not isinstance(error, MemoryError) and not _is_out_of_memory(error):
            raise
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else "out of memory"
        _say(args.command, f"error: out of memory ({detail[:200]}): try a smaller --spatial-size or --batch-size")
        return 2
    except OSError as error:  # a file or folder the user named cannot be read or written (permissions, ...)
        if error.errno not in _USER_ERRNOS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        _say(args.command, f"error: {where}{error.strerror or error}")
        return 2
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())

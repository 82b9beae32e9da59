"""`python -m audit_tasks`: the command-line shell over the stage functions.

Exit status: 0 every gate passed · 1 a gate failed (reports are still written) · 2 unusable config or
input (message on stderr naming the key or file) · 3 an internal error (a bug: traceback on stderr) ·
4 inconclusive: nothing (or too little) was audited or judged, so there is no verdict to act on.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from audit_tasks.errors import AuditError
from audit_tasks.gates import FAILED, INCONCLUSIVE, PASSED, Verdict
from audit_tasks.storage import StoragePath, storage_path

EXIT_PASSED, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4
log = logging.getLogger("audit_tasks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audit_tasks", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="validate new manifests from the landing area into the catalog")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--run-id")

    p = sub.add_parser("audit", help="the whole pipeline in one process: ingest, checks, reports, gate")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--run-id")
    p.add_argument("--out", type=storage_path, help="output folder or object-store URI (overrides output.dir)")

    p = sub.add_parser("demo", help="build the demo world and models if missing, then audit both models")
    p.add_argument("--out", type=Path, default=Path("demo_data"))
    p.add_argument("--no-airflow", action="store_true", help="run the audits in this process instead of Airflow")
    p.add_argument("--scale", choices=["full", "small"], default="full", help=argparse.SUPPRESS)
    p.add_argument(
        "--loop",
        action="store_true",
        help="close the loop: audit the biased model on its training data (red, writes sample weights), "
        "retrain it with those weights, audit it again, print both",
    )
    p.add_argument("--weights", type=Path, help="with --loop: train with this sample_weights.parquet instead")

    p = sub.add_parser("report", help="(re)render report.html from a finished run's tables")
    p.add_argument("--run", required=True, type=storage_path, help="run folder or object-store URI")

    p = sub.add_parser("check-cooccurrence", help="the co-occurrence check alone, on a manifest")
    p.add_argument("--manifest", required=True, type=storage_path)
    p.add_argument("--config", type=Path)
    p.add_argument("--out", required=True, type=storage_path)

    p = sub.add_parser("check-subgroups", help="the subgroup check alone, on a predictions table")
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--config", type=Path)
    p.add_argument("--out", required=True, type=storage_path)

    _add_import_parser(sub)
    return parser


def _add_import_parser(sub: argparse._SubParsersAction) -> None:
    """`import coco|imagefolder|hf`: a dataset in another format to a manifest (format from --out's suffix)."""
    importers = sub.add_parser("import", help="convert a COCO file, an image folder or a HF dataset to a manifest")
    kinds = importers.add_subparsers(dest="importer", required=True)
    out_help = "the manifest to write: .csv, .jsonl or .parquet"
    root_help = "make image URIs relative to this folder (dataset.image_root; default: the images folder itself)"

    p = kinds.add_parser("coco", help="a COCO instances file: tags, label and regions from the boxes")
    p.add_argument("--annotations", required=True, type=Path, help="the instances JSON file")
    p.add_argument("--images", required=True, type=Path, help="the folder holding the images' file_name")
    p.add_argument("--label", choices=["largest", "none"], default="largest", help="label rule (default: largest)")
    p.add_argument("--spurious", default="", help="comma-separated category names whose boxes are spurious")
    p.add_argument("--image-root", type=Path, help=root_help)
    p.add_argument("--out", required=True, type=Path, help=out_help)

    p = kinds.add_parser("imagefolder", help="one folder per class, as torchvision's ImageFolder reads it")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--image-root", type=Path, help=root_help)
    p.add_argument("--out", required=True, type=Path, help=out_help)

    p = kinds.add_parser("hf", help="a local Hugging Face dataset (save_to_disk, or data files): writes images")
    p.add_argument("--dataset", required=True, type=Path)
    p.add_argument("--split")
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--images", required=True, type=Path, help="the folder to write the images into")
    p.add_argument("--image-root", type=Path, help=root_help)
    p.add_argument("--out", required=True, type=Path, help=out_help)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    try:
        return _COMMANDS[args.command](args)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the shell's last line: a bug must not look like a failed gate
        traceback.print_exc()
        print("internal error: this is a bug in audit_tasks; the traceback above says where", file=sys.stderr)
        return EXIT_INTERNAL


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("audit_tasks")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def _load(path: Path | None, out: StoragePath | None = None, *, checks_only: bool = False):
    from audit_tasks.config import load_config

    if path is None:
        return None
    overrides = None
    if out is not None:
        overrides = {"output.dir": str(out.resolve() if isinstance(out, Path) else out)}
    return load_config(path, overrides, checks_only=checks_only)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from audit_tasks import pipeline

    config = _load(args.config)
    run_id = pipeline.check_run_id(args.run_id or pipeline.new_run_id())
    result = pipeline.stage_ingest(config, run_id)
    print(f"run {run_id}: {len(result.accepted)} row(s) ingested, {len(result.quarantined)} quarantined")
    print(f"quarantine: {pipeline.run_dir(config, run_id) / 'quarantine.parquet'}")
    return EXIT_PASSED


def _cmd_audit(args: argparse.Namespace) -> int:
    from audit_tasks import pipeline

    config = _load(args.config, args.out)
    outcome = pipeline.run_audit(config, args.run_id)
    _print_verdict(outcome.run_id, outcome.verdict, outcome.report_path)
    return exit_status(outcome.verdict)


def exit_status(verdict: Verdict) -> int:
    """The exit status of a verdict: passed 0, failed 1, inconclusive 4."""
    return {PASSED: EXIT_PASSED, FAILED: EXIT_GATE_FAILED, INCONCLUSIVE: EXIT_INCONCLUSIVE}[verdict.status]


def _print_verdict(run_id: str, verdict: Verdict, report: StoragePath) -> None:
    print(f"run {run_id}: {verdict.describe()}")
    print(f"report: {report}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from audit_tasks.demo.run import came_out_as_planted, run_demo

    if args.weights is not None and not args.loop:
        from audit_tasks.errors import ConfigError

        raise ConfigError("--weights is used only with --loop")
    if args.loop:
        from audit_tasks.demo.loop import run_loop

        loop = run_loop(args.out.resolve(), use_airflow=not args.no_airflow, scale=args.scale, weights=args.weights)
        return EXIT_GATE_FAILED if loop.before_passed else EXIT_PASSED  # the loop starts from a red audit
    results = run_demo(args.out.resolve(), use_airflow=not args.no_airflow, scale=args.scale)
    return EXIT_PASSED if came_out_as_planted(results) else EXIT_GATE_FAILED


def _cmd_report(args: argparse.Namespace) -> int:
    from audit_tasks.errors import ConfigError
    from audit_tasks.report import render_report

    if not (args.run / "gates.parquet").is_file() and not (args.run / "summary.json").is_file():
        raise ConfigError(f"{args.run} is not a finished audit run (no gates.parquet or summary.json)")
    print(f"report: {render_report(args.run)}")
    return EXIT_PASSED


def _cmd_check_cooccurrence(args: argparse.Namespace) -> int:
    from audit_tasks.check_commands import run_cooccurrence_check

    outcome = run_cooccurrence_check(args.manifest, _load(args.config, checks_only=True), args.out)
    print(f"co-occurrence: {outcome.verdict.describe()}")
    print(f"tables: {outcome.out_dir}")
    return exit_status(outcome.verdict)


def _cmd_check_subgroups(args: argparse.Namespace) -> int:
    from audit_tasks.check_commands import run_subgroup_check

    outcome = run_subgroup_check(args.predictions, _load(args.config, checks_only=True), args.out)
    print(f"subgroups: {outcome.verdict.describe()}")
    print(f"tables: {outcome.out_dir}")
    return exit_status(outcome.verdict)


def _cmd_import(args: argparse.Namespace) -> int:
    from audit_tasks import importers

    if args.importer == "coco":
        spurious = [name.strip() for name in args.spurious.split(",") if name.strip()]
        result = importers.import_coco(
            args.annotations, args.images, image_root=args.image_root, label=args.label, spurious=spurious
        )
    elif args.importer == "imagefolder":
        result = importers.imagefolder_manifest(args.root, image_root=args.image_root)
    else:
        result = importers.hf_manifest(
            args.dataset,
            args.images,
            split=args.split,
            image_column=args.image_column,
            label_column=args.label_column,
            image_root=args.image_root,
        )
    for note in result.notes:
        log.warning("%s", note)
    written = importers.write_manifest(result.frame, args.out)
    print(f"{result.rows} row(s) written to {written}")
    print(f"image root: {result.image_root} (set dataset.image_root to it)")
    return EXIT_PASSED


_COMMANDS = {
    "ingest": _cmd_ingest,
    "audit": _cmd_audit,
    "demo": _cmd_demo,
    "report": _cmd_report,
    "check-cooccurrence": _cmd_check_cooccurrence,
    "check-subgroups": _cmd_check_subgroups,
    "import": _cmd_import,
}

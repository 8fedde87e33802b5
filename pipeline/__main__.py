"""Command line: ``python -m pipeline predict | export | download-cifar10``.

The DVC stages have their own entry points (``python -m pipeline.stages.<stage>``); ``python -m
pipeline <stage> ...`` forwards to them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

STAGES = ("prepare", "extract", "train", "evaluate", "compare")


def _positive(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(stage, help=f"the DVC stage {stage} (python -m pipeline.stages.{stage} --help)", add_help=False)

    p = sub.add_parser("predict", help="classify image files or folders with the trained backbone + head")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--config", default="head", help="which trained head: head (default), heads.<name>, finetune.<name>")
    p.add_argument("--features", help="feature file whose backbone to use (default: the one the head was trained on)")
    p.add_argument("--head", help="head file (default: that of --config)")
    p.add_argument("--top-k", type=_positive, default=5)
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")

    p = sub.add_parser("export", help="save backbone + head as one torch.export program (uint8 images -> scores)")
    p.add_argument("--config", default="head", help="which trained head: head (default), heads.<name>, finetune.<name>")
    p.add_argument("--features", help="feature file whose backbone to use (default: the one the head was trained on)")
    p.add_argument("--head", help="head file (default: that of --config)")
    p.add_argument("--out", default="models/model.pt2")

    p = sub.add_parser("download-cifar10", help="download the official CIFAR-10 with torchvision (online)")
    p.add_argument("--root", default="data/raw")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = _parser().parse_known_args(argv)
    if args.command in STAGES:
        module = importlib.import_module(f"pipeline.stages.{args.command}")
        return module.main(["--params", args.params, *rest])
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")

    from pipeline.core.errors import guarded

    return guarded(lambda: _commands(args))


def _commands(args: argparse.Namespace) -> int:
    if args.command == "download-cifar10":
        from pipeline.data.sources import download_cifar10

        print(f"CIFAR-10 is in {download_cifar10(args.root)}; set data.source to that directory")
        return 0
    if args.command == "export":
        from pipeline import model

        trained = _load_trained(args)
        print(f"exported {trained.backbone.name} + {trained.head.kind} head -> {model.export(trained, args.out)}")
        return 0
    return _predict(args)


def _load_trained(args: argparse.Namespace):
    """The trained head that --config or --head names, with the backbone of its feature file."""
    from pipeline import model
    from pipeline.core import layout
    from pipeline.core.head_registry import head_class
    from pipeline.heads.base import head_header

    head_path = args.head or layout.head_file(args.config)
    features = args.features or layout.FEATURES[head_class(head_header(head_path)["kind"]).Params.input]
    return model.load_trained(features, head_path)


def _predict(args: argparse.Namespace) -> int:
    """Print each image's top classes as they come (or one JSON document); 1 when some could not be read."""
    from pipeline.core.errors import PipelineError
    from pipeline.data.images import image_paths
    from pipeline.model import predict

    paths = image_paths(args.paths)
    if not paths:
        raise PipelineError(
            f"no image found in {' '.join(args.paths)}; give image files, or folders holding them (any format "
            "PIL reads: .jpg, .png, ...)"
        )
    results = []
    for r in predict(_load_trained(args), paths, args.top_k, args.batch_size):
        results.append(r)
        if args.json:
            continue
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["top"]), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"error: {len(failed)} of {len(results)} images could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m pipeline <stage> ...``; each stage is a thin call into pipeline.stages."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="list the dataset and write the train/val/test splits")
    p.add_argument("--out", default="data/prepared/splits.json")

    p = sub.add_parser("extract", help="run the frozen backbone over every image, cache features to HDF5")
    p.add_argument("--splits", default="data/prepared/splits.json")
    p.add_argument("--out", required=True, help="feature file (.h5)")
    p.add_argument("--cut", action="store_true", help="cache the activations at backbone.cut instead (the cut cache)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train", help="fit a head on the cached training features")
    p.add_argument("--features", required=True)
    p.add_argument("--splits", default="data/prepared/splits.json")
    p.add_argument("--config", default="head", help="head configuration: head (default), heads.<name> or finetune.<name>")
    p.add_argument("--out", default="models/head.npz")

    p = sub.add_parser("evaluate", help="metrics and plots of a trained head on val and test")
    p.add_argument("--features", required=True)
    p.add_argument("--head", default="models/head.npz")
    p.add_argument("--name", default="head", help="the name this head has in the comparison")
    p.add_argument("--out", default="evaluation")

    p = sub.add_parser("compare", help="one table and one chart of evaluated heads")
    p.add_argument("metrics", nargs="*",
                   help="metrics.json files written by evaluate (default: the main head's and those of `heads:`)")
    p.add_argument("--out", default="evaluation")

    p = sub.add_parser("predict", help="classify image files or folders with the trained backbone + head")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--features", help="feature file whose backbone to use (default: the one params.yaml names)")
    p.add_argument("--head", default="models/head.npz")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")

    p = sub.add_parser("export", help="save backbone + head as one torch.export program (uint8 images -> scores)")
    p.add_argument("--features", help="feature file whose backbone to use (default: the one params.yaml names)")
    p.add_argument("--head", default="models/head.npz")
    p.add_argument("--out", default="models/model.pt2")

    p = sub.add_parser("download-cifar10", help="download the official CIFAR-10 with torchvision (online)")
    p.add_argument("--root", default="data/raw")

    args = parser.parse_args(argv)

    from pipeline import stages
    from pipeline.config import load_params
    from pipeline.data import download_cifar10
    from pipeline.errors import PipelineError

    try:
        if args.command == "download-cifar10":
            print(f"CIFAR-10 is in {download_cifar10(args.root)}; set data.source to that directory")
            return 0
        params = load_params(args.params)
        if args.command == "prepare":
            stages.prepare(params, args.out)
        elif args.command == "extract":
            stages.extract(params, args.splits, args.out, progress=not args.no_progress, cut=args.cut)
        elif args.command == "train":
            stages.train(params, args.features, args.splits, args.out, head_key=args.config)
        elif args.command == "evaluate":
            stages.evaluate(args.features, args.head, args.out, name=args.name)
        elif args.command == "compare":
            metrics = args.metrics or [f"{args.out}/metrics.json", *(f"{args.out}/heads/{n}/metrics.json" for n in params.heads),
                                       *(f"{args.out}/finetune/{n}/metrics.json" for n in params.finetune)]
            stages.compare(metrics, args.out)
        elif args.command in ("predict", "export"):
            from pipeline import model

            from pipeline.heads import FINETUNE, head_header

            cut = head_header(args.head)["kind"] == FINETUNE
            features = args.features or (params.backbone.cut_file if cut else params.backbone.features_file)
            trained = model.load_trained(features, args.head)
            if args.command == "export":
                print(f"exported {trained.backbone.name} + {trained.head.kind} head -> {model.export(trained, args.out)}")
            else:
                results = model.predict(trained, model.image_paths(args.paths), args.top_k, args.batch_size)
                if args.json:
                    print(json.dumps(list(results), indent=1))
                for r in [] if args.json else results:
                    print(f"{r['path']}: " + ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["top"]))
    except (PipelineError, FileNotFoundError) as err:
        message = str(err).strip()
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the original message
            message = message.splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

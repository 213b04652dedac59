"""``fsl-app export``: argument parsing without importing torch (so that ``fsl-app --help`` answers at once)."""

from __future__ import annotations

from ..export.formats import EXPORT_FORMATS, QUANTIZATIONS


def add_export_command(commands) -> None:
    """Register ``fsl-app export RUN_DIR --format onnx|torchscript|bundle [--out PATH] [--threshold] [--quantize]``."""
    parser = commands.add_parser("export", help="write a run as ONNX, TorchScript or a self-contained bundle")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `fsl-app train`")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="file to write (.onnx, .pt or .zip; default: next to the run folder)")
    parser.add_argument("--threshold", default="none", metavar="auto|none|FLOAT",
                        help="report 'unknown' below this top probability; auto: accept 95%% of the correct "
                             "held-out predictions (default: none)")
    parser.add_argument("--quantize", default=None, choices=QUANTIZATIONS,
                        help="static int8 quantization of the ONNX model for CPU deployment, calibrated on the run's "
                             "images (fp32 with a message when fewer than 10 can be read)")
    parser.add_argument("--ood", default="none", metavar="auto|none|FLOAT",
                        help="report 'unknown' when the autoencoder's out-of-distribution score is above this; auto: "
                             "1.0, the 95th percentile of the run's own images (default: none, the score is only "
                             "reported)")
    parser.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from ..export import export_run, exported_info

    out = export_run(args.run_dir, args.format, args.out, threshold=args.threshold, quantize=args.quantize,
                     ood=args.ood)
    info = exported_info(out, args.format)
    if info.get("quantization_fallback"):
        print(f"note: {info['quantization_fallback']}")
    threshold = "none" if info["threshold"] is None else f"{info['threshold']:.4f}"
    print(f"wrote {out} ({args.format}{', int8' if info.get('quantization') else ''}, {len(info['classes'])} classes, "
          f"threshold {threshold}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0

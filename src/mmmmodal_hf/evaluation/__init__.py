"""`mmmmodal eval MODEL --data ROWS... --output-dir DIR`: score a checkpoint per kind and language.

Every assistant turn of the rows (or the last of each, `--turns last`) is answered greedily from the
reference history before it, and scored against the reference (docs/evaluation.md). DIR receives
`predictions.jsonl` (written as turns are predicted: a stopped run resumes), `metrics.json`,
`report.md` and `report.png`.
"""

import json
import sys

from ..cli_help import add_video_reading_options, command_parser, video_reading_options
from .metrics import DEFAULT_METRICS, METRICS
from .remote import Server
from .run import EvalSettings, evaluate, predict, recompute


def build_parser():
    parser = command_parser("mmmmodal eval", __doc__)
    parser.add_argument(
        "model", help="a model folder or Hub id; with --backend openai, the model as the server names it"
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="data files or folders (JSONL, JSON, Parquet; datasets saved with `save_to_disk`), or Hub dataset ids "
        "(`owner/name`); `FOLDER:split` for one split of several",
    )
    parser.add_argument("--output-dir", required=True, help="folder for predictions, metrics and the report")
    parser.add_argument(
        "--turns", choices=("all", "last"), default="all", help="score every assistant turn, or the last"
    )
    parser.add_argument("--group-by", nargs="+", default=["kind", "language"], help="row fields that group the scores")
    parser.add_argument(
        "--metrics", nargs="+", choices=METRICS, default=list(DEFAULT_METRICS), metavar="METRIC",
        help=f"which to report, of {', '.join(METRICS)}",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="turns per batched, left-padded generate")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the longest answer, in tokens")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="the model's weights"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="torch's seed (decoding is greedy)")
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm", "openai"),
        default="transformers",
        help="generate here, with an offline vLLM engine here, or ask an OpenAI-compatible server (--base-url)",
    )
    parser.add_argument(
        "--vllm-args", type=json.loads, help="more `vllm.LLM` arguments as JSON, such as '{\"max_model_len\": 8192}'"
    )
    add_video_reading_options(parser, "--backend transformers or vllm: a server reads videos as it was started to")
    parser.add_argument("--base-url", help="the server's API root for --backend openai, such as http://host:8000/v1")
    parser.add_argument("--judge-url", help="an OpenAI-compatible server whose model rates each answer 1-5")
    parser.add_argument("--judge-model", help="the judge's model name (unset: the first model the server lists)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from importlib.util import find_spec

    if missing := [name for name in ("sacrebleu", "jiwer", "rouge_score") if find_spec(name) is None]:
        print(f'mmmmodal eval needs {", ".join(missing)}: pip install "mmmmodal-hf[eval]"', file=sys.stderr)
        return 1
    if args.batch_size < 1 or args.max_new_tokens < 1:
        print("mmmmodal eval: --batch-size and --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    video_options = video_reading_options(args)
    if video_options and args.backend == "openai":
        print("mmmmodal eval: --num-frames, --fps and --pool-frames are for --backend transformers or vllm (a server "
              "reads videos as its --media-io-kwargs and --mm-processor-kwargs say)", file=sys.stderr)  # fmt: skip
        return 2
    if args.backend == "openai" and not args.base_url:
        print("mmmmodal eval: --backend openai needs --base-url", file=sys.stderr)
        return 2
    settings = EvalSettings(
        model=args.model, data=list(args.data), turns=args.turns, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, seed=args.seed, backend=args.backend,
        base_url=args.base_url, engine_args=args.vllm_args, video_options=video_options or None,
    )  # fmt: skip
    judge = Server(args.judge_url, args.judge_model) if args.judge_url else None
    result = evaluate(settings, args.output_dir, tuple(args.metrics), tuple(args.group_by), judge=judge)
    overall = ", ".join(f"{name} {value['value']:.3f} (n={value['n']})" for name, value in result["overall"].items())
    print(f"{overall}\nskipped: {len(result['skipped'])}; report: {args.output_dir}/report.md")
    return 0


__all__ = ["EvalSettings", "evaluate", "predict", "recompute", "main"]

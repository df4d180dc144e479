"""``tncn bench``: the speed and memory table of tncn.bench (matmul rate, P-TNCN, LSTM/GRU, memory)."""
from __future__ import annotations

import torch

from tncn.commands import flags
from tncn.errors import UserError


def register(sub, argv=None) -> None:
    p = sub.add_parser("bench", help="measure P-TNCN speed and memory against the matmul rate and BPTT",
                       description="Measure, in one run: this machine's float32 matmul rate; P-TNCN training "
                                   "tokens/s at H=256 and 1000 (L=2, batch 50, vocab 49) and its fraction of the "
                                   "matmul rate; LSTM/GRU truncated-BPTT tokens/s; word-level (vocab 10k) tokens/s; "
                                   "peak memory against sequence length; the online learners (RTRL, UORO, SnAp-1) "
                                   "at batch 32.",
                       parents=[flags.parent("device", "threads", helps={
                           "threads": "torch threads (default: torch's own choice, all cores)"})])
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--repeats", type=int, default=5, help="timings per configuration; the median is reported")
    p.add_argument("--quick", action="store_true", help="H=256 only, T up to 1,000, no word level (a smoke run)")
    p.add_argument("--online", action="store_true", help="only the online learners' rows (RTRL, UORO, SnAp-1 at "
                                                         "H=128 and 256, RTRL at 32, 64, 128; B=32) beside P-TNCN's")
    p.set_defaults(func=run)


def run(args) -> int:
    from tncn import bench, runs

    o = flags.given(args, [flags.FLAGS["device"], flags.FLAGS["threads"]])
    device = runs.resolve_device(o.get("device", "cpu"))
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    json_path = flags.output_file(args.json, "--json")
    if "threads" in o:
        torch.set_num_threads(o["threads"])
    result = bench.run_all(str(device), args.repeats, args.quick, progress=lambda m: print(m, flush=True),
                           online_only=args.online)
    print()
    print(bench.format_table(result))
    if json_path:
        bench.save_json(result, json_path)
        print(f"\nwrote {args.json}")
    return 0

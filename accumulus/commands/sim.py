"""``accumulus sim``: co-simulate the generated Verilog against the golden model."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "sim"
HELP = "Co-simulate DIR/rtl (cocotb: Icarus or Verilator) against the golden model, bit-exact"
EXAMPLES = """
  accumulus sim build/digits                          # 100 test images on Icarus, back-pressure 0.3
  accumulus sim build/digits --simulator verilator --frames 500 --seed 3
  accumulus sim build/digits --stimulus worst         # drive every accumulator to its bounds
  accumulus sim build/digits --stimulus inputs.npy --backpressure 0 --waves
  accumulus sim build/digits --frames 10 --engines     # each layer engine alone too
Writes DIR/sim/results.json (frames, mismatches with the first in detail, measured cycles
per frame and latency, simulator version, wall time). Exit code 1 on any mismatch.
"""


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"back-pressure must be a probability in [0, 1), got {p}")
    return p


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="project folder with plan.json and rtl/ (from 'accumulus build')")
    parser.add_argument("--frames", type=int, default=100,
                        help="frames of test images or of FILE.npy to simulate (default 100; worst-case runs every vector)")
    parser.add_argument("--simulator", choices=["icarus", "verilator"], default="icarus",
                        help="Icarus starts fastest; Verilator runs long simulations faster (default icarus)")
    parser.add_argument("--backpressure", type=_probability, default=0.3, metavar="P",
                        help="probability of a random tvalid gap / tready stall before each beat (default 0.3)")
    parser.add_argument("--waves", action="store_true", help="record waveforms (FST on Icarus, VCD on Verilator)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and back-pressure (default 0)")
    parser.add_argument("--stimulus", default="test", metavar="test|worst|FILE.npy",
                        help="test images of the plan's dataset, worst-case accumulator vectors, or an .npy of inputs")
    parser.add_argument("--measure-frames", type=int, default=8,
                        help="frames of the no-back-pressure phase that measures cycles per frame (default 8)")
    parser.add_argument("--engines", action="store_true",
                        help="also run each layer engine of rtl/layers/ alone on the golden tensors (pins a mismatch to a layer)")
    parser.add_argument("--out", default=None, help="folder to write sim/ into (default: DIR)")


def run(args) -> int:
    from accumulus.errors import UserError
    from accumulus.paths import load_array, load_plan, output_dir

    from accumulus.compiler.frontend.mls_load import is_mls_plan

    mls_plan = is_mls_plan(args.dir)
    if mls_plan:
        from accumulus.compiler.frontend.mls_load import MLSPlan

        MLSPlan.load(args.dir)
    else:
        load_plan(args.dir)   # one clear line for a missing or unreadable project before cocotb starts
    if args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.measure_frames < 0:
        raise UserError(f"--measure-frames must be >= 0 (0 skips the cycles-per-frame measurement), "
                        f"got {args.measure_frames}")
    if args.stimulus not in ("test", "worst"):
        if not args.stimulus.endswith(".npy") and not Path(args.stimulus).exists():
            raise UserError(f"--stimulus {args.stimulus}: expected test, worst or the path of an .npy of inputs")
        load_array(args.stimulus, "--stimulus")   # the layout is checked against the plan by the simulation
    output_dir(args.out or args.dir, "--out" if args.out else "DIR", children=("sim",))
    if mls_plan:
        from accumulus.sim.mls_cosim import simulate_mls as simulate
    else:
        from accumulus.sim.cosim import simulate

    r = simulate(args.dir, simulator=args.simulator, frames=args.frames, seed=args.seed,
                 backpressure=args.backpressure, stimulus=args.stimulus, waves=args.waves,
                 measure_frames=args.measure_frames, out=args.out, engines=args.engines)
    cpf, est = r["cycles_per_frame"], r["cycles_per_frame_estimate"]
    verdict = "PASS" if r["passed"] else "FAIL"
    print(f"{verdict}: {r['frames'] - r['mismatched_frames'] - r['frames_missing']}/{r['frames']} frames bit-exact "
          f"on {r['simulator_version']} (stimulus {r['stimulus']}, back-pressure {r['backpressure']}, seed {r['seed']})")
    if cpf is not None:
        err = f" ({100 * r['cycles_per_frame_error']:.1f}% from the plan's estimate {est})" if est else ""
        print(f"  cycles per frame {cpf:g}{err}; latency {r['latency_cycles']} cycles")
    print(f"  build {r['build_seconds']:.1f} s, simulation {r['sim_seconds']:.1f} s, wall {r['wall_seconds']:.1f} s")
    if r["first_mismatch"]:
        m = r["first_mismatch"]
        print(f"  {r['mismatches']} mismatching outputs in {r['mismatched_frames']} frames; first: {m['design']} "
              f"frame {m['frame']} output {m['output_index']}: expected {m['expected']}, got {m['got']}")
    if r["frames_missing"] or r["extra_frames"] or r["stalled"]:
        print(f"  frames missing {r['frames_missing']}, extra {r['extra_frames']}; {r['stalled'] or ''}")
    if r["waves"]:
        print(f"  waveforms: {r['waves']}")
    print(f"  results: {r['results_path']}")
    return 0 if r["passed"] else 1

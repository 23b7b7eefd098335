"""MAC utilisation of the matrix-vector engine in steady state (Amaranth simulation).

For each layer shape (K inputs, N outputs, PE x SIMD folding) a random synthetic plan is
built, the engine is simulated on ``--frames`` input vectors offered every cycle with no
back-pressure, every output is checked against ``compiler/golden.py``, and the
utilisation is measured as MAC steps issued (each step = PE*SIMD multiply-accumulates)
divided by cycles, from the first step of frame ``--skip`` to the first step of the last
frame (steady state: fill and drain excluded; a step enters the array in one cycle and
occupies every cell once as it moves through). Cycles per frame are measured at the
output, between the first beats of successive output vectors. Also reports the measured cycles per frame
against the plan's FINN estimate ``(N/PE)*(K/SIMD)`` and the engine's latency.

Writes ``OUT/mac_utilisation.json``.

    .venv/bin/python benchmarks/mac_utilisation.py --frames 16
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

CASES = [  # (K, N, PE, SIMD)
    (64, 64, 8, 8),
    (64, 64, 4, 16),
    (64, 64, 16, 4),
    (128, 64, 8, 8),
    (64, 64, 1, 64),
]


def measure(k, n, pe, simd, frames, skip, seed=0):
    from accumulus.compiler import golden
    from accumulus.compiler.synthetic import mlp_plan
    from accumulus.hw.mvu import MVUSpec
    from accumulus.hw.stream_util import pack_beats, simulate_stream, unpack_beats

    plan = mlp_plan((k, n, 10), pe=[pe, 1], simd=[simd, 1], seed=seed)
    layer = plan.layers[0]
    spec = MVUSpec(plan, layer)
    rng = np.random.default_rng(seed)
    x = rng.integers(spec.input_type.min, spec.input_type.max + 1, size=(frames, k))
    dut = spec.create()
    t0 = time.time()
    res = simulate_stream(dut, pack_beats(x, spec.in_elems, spec.in_width), frames * spec.fold_out,
                          count=dut.mac_step)
    sim_s = time.time() - t0
    y = unpack_beats(res["out"], spec.out_elems, spec.out_width, spec.out_signed, spec.fold_out)
    want = golden.run_layer(plan, layer, {"x": x})
    if not np.array_equal(y, want):
        raise SystemExit(f"K={k} N={n} PE={pe} SIMD={simd}: engine output differs from the golden model")
    firsts = np.asarray(res["out_times"][::spec.fold_out])        # first output beat of each frame
    window_frames = frames - 1 - skip
    out_interval = (int(firsts[-1]) - int(firsts[skip])) / window_frames
    # MAC steps enter the array in frame order; each fills every cell once (PE*SIMD MACs)
    steps = np.asarray(res["count_times"])
    per_frame = spec.fold_out * spec.fold_in
    start, end = int(steps[skip * per_frame]), int(steps[(frames - 1) * per_frame])
    window_steps = int(((steps >= start) & (steps < end)).sum())
    return {
        "K": k, "N": n, "pe": pe, "simd": simd, "frames": frames, "steady_frames": window_frames,
        "macs_per_cycle_peak": pe * simd,
        "steady_state_utilisation": window_steps / (end - start),
        "steady_state_window_cycles": end - start,
        "overall_utilisation": res["count"] / res["cycles"],
        "cycles_per_frame_measured": out_interval,
        "cycles_per_frame_estimate": layer["cycles_per_frame"],
        "latency_measured": res["out_valid_first"] - res["in_times"][0],
        "latency_spec": spec.latency,
        "acc_bits": spec.acc_bits,
        "threshold_search": spec.requant.search if spec.requant else None,
        "outputs_match_golden": True,
        "sim_seconds": round(sim_s, 2),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16, help="input vectors per case (>= skip + 9)")
    p.add_argument("--skip", type=int, default=3, help="frames left out of the window as fill")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    args = p.parse_args(argv)
    if args.frames < args.skip + 9:
        raise SystemExit("--frames must leave at least 8 steady-state frames after --skip")
    rows = []
    for case in CASES:
        row = measure(*case, frames=args.frames, skip=args.skip)
        print(f"K={row['K']:4d} N={row['N']:3d} PE={row['pe']:2d} SIMD={row['simd']:2d}: "
              f"steady utilisation {row['steady_state_utilisation']:.3f}, "
              f"cycles/frame {row['cycles_per_frame_measured']:.1f} (estimate {row['cycles_per_frame_estimate']}), "
              f"latency {row['latency_measured']}", flush=True)
        rows.append(row)
    import amaranth
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "mac_utilisation", "python": platform.python_version(), "amaranth": amaranth.__version__,
           "frames": args.frames, "skip": args.skip, "cases": rows,
           "min_steady_state_utilisation": min(r["steady_state_utilisation"] for r in rows)}
    (out / "mac_utilisation.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'mac_utilisation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

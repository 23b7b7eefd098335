"""``accumulus report``: what the accumulator widths buy, per layer, on one board.

For each policy of ``policies`` (default ``exact, datatype, fixed:32``) the plan is built
with ``hw/build.py`` into ``DIR/reports/<policy>/rtl`` and the whole top is synthesised
with the same Yosys options for every policy (one job per policy and per variant: LUT-only,
and with hard multipliers where the family has them). Each netlist is split per layer and
into multipliers / reduction datapath / thresholds / rest (:mod:`.split`); place and route
inside the UART harness gives Fmax and whether it fits (iCE40, ECP5); for Xilinx the Vivado
TCL/XDC are written. The cost model ``compiler/cost.py`` is evaluated beside Yosys.

Outputs: ``DIR/reports/report.json`` (numbers, tool versions, options), ``report.md``,
and PNG plots (``widths.png``, ``lut_per_layer.png``, ``dsp_per_layer.png``,
``estimator.png``).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from accumulus.compiler.plan import Plan
from accumulus.compiler import cost as cost_model
from accumulus.errors import UserError

from .boards import Board
from .calibrate import order_needs_buffer
from .split import CATEGORIES, split_netlist
from .synth import RESOURCE_KEYS, SynthJob, run_many, yosys_version

__all__ = ["rerender", "targets", "savings", "DEFAULT_POLICIES", "policy_dir", "policy_widths", "estimate_layers", "run_report", "variants_for",
           "threshold_storage_bits"]

DEFAULT_POLICIES = ("exact", "datatype", "fixed:32")
DELTA_KEYS = ("lut", "ff", "carry", "dsp", "bram_bits")


def policy_dir(policy: str) -> str:
    """Folder name of a policy under ``reports/`` (``fixed:32`` -> ``fixed-32``)."""
    return policy.replace(":", "-")


def check_policy(policy: str) -> str:
    if policy in ("exact", "datatype"):
        return policy
    m = re.fullmatch(r"(fixed|exact-minus):(\d+)", policy)
    if not m or int(m.group(2)) < 1:
        raise UserError(f"unknown accumulator policy '{policy}': use exact, datatype, fixed:K or exact-minus:D")
    return policy


def policy_widths(layer: dict, policy: str) -> list[int]:
    """Accumulator width per PE under ``policy`` (the numbers ``hw/`` builds; numpy-only)."""
    exact = [int(b) for b in layer["folding"]["pe_acc_bits"]]
    if policy == "exact":
        return exact
    if policy == "datatype":
        return [int(layer["acc"]["bits"]["datatype"])] * len(exact)
    kind, k = policy.split(":")
    if kind == "fixed":
        return [int(k)] * len(exact)
    return [max(1, b - int(k)) for b in exact]


def threshold_storage_bits(plan: Plan, layer: dict, threshold_bits) -> int:
    """Bits of threshold ROM of one layer: channels x levels x stored width (per PE)."""
    rq = layer.get("requant")
    if not rq or rq.get("kind") != "thresholds":
        return 0
    levels = int(plan.array(rq["thresholds"]).shape[1])
    pe = int(layer["folding"]["pe"])
    per_pe = int(layer["channels"]) // pe
    tb = threshold_bits if isinstance(threshold_bits, (list, tuple)) else [threshold_bits] * pe
    return int(sum(per_pe * levels * int(b) for b in tb))


def estimate_layers(plan: Plan, policy: str, family: str, coeff: dict | None = None,
                    built: dict | None = None) -> dict:
    """compiler/cost.py per MAC layer under ``policy`` (``built``: build.json layers by name)."""
    coeff = coeff or cost_model.load_coefficients(family)
    out = {}
    for layer in plan.layers:
        if layer["kind"] not in ("matvec", "conv"):
            continue
        b = (built or {}).get(layer["name"], {})
        acc = b.get("acc_bits") or policy_widths(layer, policy)
        tb = b.get("threshold_bits") or ([a + 1 for a in acc] if layer.get("requant") else [])
        rq = layer.get("requant")
        levels = int(plan.array(rq["thresholds"]).shape[1]) if rq and rq["kind"] == "thresholds" else 0
        fold = layer["folding"]
        if layer.get("engine") == "const" or b.get("engine") == "const":
            # the adder graph as built (build.json, under the policy) or as planned (exact)
            g = b.get("const") or layer.get("const")
            if g is not None:
                est = cost_model.const_graph_cost(g, int(layer["channels"]), levels, max(tb) if tb else 0, coeff)
                out[layer["name"]] = {k: float(v) for k, v in _with_swg(est, layer, int(layer["fan_in"]), coeff).items()}
                out[layer["name"]]["threshold_storage_bits"] = 0
                out[layer["name"]]["engine"] = "const"
                continue
        est = cost_model.mac_layer_cost(
            IntTypeBits(layer["weight_type"]), IntTypeBits(layer["input_type"]), int(layer["channels"]),
            int(layer["fan_in"]), int(fold["pe"]), int(fold["simd"]), acc, levels, max(tb) if tb else 0, coeff,
            reorder=order_needs_buffer(fold["channel_order"], int(fold["pe"])))
        est = _with_swg(est, layer, int(fold["simd"]), coeff)
        out[layer["name"]] = {k: float(v) for k, v in est.items()}
        out[layer["name"]]["engine"] = "rom"
        out[layer["name"]]["threshold_storage_bits"] = threshold_storage_bits(plan, layer, tb) if tb else 0
    return out


def _with_swg(est: dict, layer: dict, simd: int, coeff: dict) -> dict:
    """A conv layer's estimate plus its sliding-window generator's (hw/swg.py, in the layer's module)."""
    if not layer.get("conv"):
        return est
    w = cost_model.swg_cost(layer["conv"], IntTypeBits(layer["input_type"]), simd, coeff)
    return {k: est[k] + w.get(k, 0) for k in est}


def IntTypeBits(t: dict) -> int:  # noqa: N802 - reads like a type conversion
    return int(t["bits"])


def variants_for(board: Board) -> list[str]:
    """Synthesis variants: ``lut`` (multipliers in LUTs) everywhere, ``dsp`` where it differs."""
    if board.family == "ice40":
        return ["lut"]        # synth_ice40 maps no 4-bit products to SB_MAC16 anyway
    return ["lut", "dsp"]


def _group(name: str):
    m = re.search(r"(^|\.)(layer_\w+?)(\.|$|\s|\[)", name.lstrip("\\"))
    return m.group(2) if m else None


def packed_summary(util: dict | None) -> str:
    """'TRELLIS_COMB 79128/83640 (94%)': the fullest logic cell kind of a packed design."""
    if not util:
        return "-"
    logic = {k: v for k, v in util.items() if v["available"] and any(t in k for t in ("COMB", "LC", "FF", "SLICE"))}
    if not logic:
        return "-"
    k, v = max(logic.items(), key=lambda kv: kv[1]["used"] / kv[1]["available"])
    return f"{k} {v['used']}/{v['available']} ({100.0 * v['used'] / v['available']:.0f}%)"


def _sum(parts: dict) -> dict:
    return {k: int(sum(p.get(k, 0) for p in parts.values())) for k in RESOURCE_KEYS}


def _ratio(a, b):
    if not b:
        return None if not a else float("inf")
    return round(a / b, 3)


def run_report(project: Path, board: Board, policies=DEFAULT_POLICIES, *, estimate_only: bool = False,
               pnr: bool = True, variants: list[str] | None = None, workers: int | None = None,
               out: Path | None = None, plan_note: str | None = None, progress: bool = True,
               layer_jobs: bool = False, pnr_clock_mhz: float | None = None,
               pnr_router: str | None = None) -> dict:
    """Build, synthesise, place and route ``project``'s plan under each policy; write the report.

    ``pnr_clock_mhz``: place and route against that clock constraint instead of the board
    oscillator's (an Fmax measurement, :func:`boards.pnr.retarget_clock`); ``pnr_router``:
    nextpnr's ``--router`` (None: nextpnr's default)."""
    project = Path(project)
    out = Path(out or project)
    rep_dir = out / "reports"
    rep_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan.load(project)
    policies = [check_policy(p) for p in policies]
    if not policies:
        raise UserError("--policies is empty: give at least one of exact, datatype, fixed:K, exact-minus:D")
    variants = list(variants or variants_for(board))
    workers = workers or os.cpu_count() or 1
    say = (lambda m: print(f"report: {m}", file=sys.stderr)) if progress else (lambda m: None)
    t0 = time.monotonic()
    macs = [l for l in plan.layers if l["kind"] in ("matvec", "conv")]
    note = plan_note or plan.doc.get("source", {}).get("model")

    widths = {}
    for l in macs:
        bits = l["acc"]["bits"]
        widths[l["name"]] = {"datatype": int(bits["datatype"]), "a2q": int(max(bits["a2q"])),
                             "a2q_plus": int(max(bits["a2q_plus"])), "exact": int(max(bits["exact"])),
                             "target": bits.get("target"), "pe_acc_bits": [int(b) for b in l["folding"]["pe_acc_bits"]],
                             "pe": int(l["folding"]["pe"]), "simd": int(l["folding"]["simd"]),
                             "fan_in": int(l["fan_in"]), "channels": int(l["channels"]),
                             "engine": l.get("engine", "rom"),
                             "full_adders": cost_model.layer_full_adders(l)["full_adders"]}

    doc: dict = {
        "format_version": 1, "board": board.doc, "plan": {"source": note, "dir": str(project)},
        "policies": policies, "variants": variants, "widths": widths,
        "options": {"estimate_only": estimate_only, "pnr": pnr, "workers": workers, "pnr_clock_mhz": pnr_clock_mhz,
                    "pnr_router": pnr_router},
        "tools": {}, "policy": {},
        "verification": verification_summary(plan.doc),
    }
    coeff = cost_model.load_coefficients(board.family)

    builds = {}
    if not estimate_only:
        from accumulus.hw.build import build as hw_build
        import amaranth

        doc["tools"]["amaranth"] = amaranth.__version__
        for pol in policies:
            d = rep_dir / policy_dir(pol)
            say(f"building {pol} -> {d / 'rtl'}")
            builds[pol] = hw_build(plan, d, pol)
    for pol in policies:
        built = {l["layer"]: l for l in builds.get(pol, {}).get("layers", [])}
        doc["policy"][pol] = {"estimate": estimate_layers(plan, pol, board.family, coeff, built),
                              "acc_bits": {n: (built.get(n, {}).get("acc_bits") or policy_widths(plan.layer(n), pol))
                                           for n in widths}}
    if estimate_only:
        return _finish(doc, rep_dir, plan, board, t0, say)

    # -- synthesis: one flat job per policy and variant, split per layer and category -------
    doc["tools"]["yosys"] = yosys_version()
    jobs, keys = [], []
    for pol in policies:
        rtl = rep_dir / policy_dir(pol) / "rtl"
        for var in variants:
            jobs.append(SynthJob(f"{pol}/{var}", [rtl / builds[pol]["top"]["file"]], builds[pol]["top"]["module"],
                                 board.family, rep_dir / policy_dir(pol) / f"synth-{board.family}-{var}",
                                 dsp=(var == "dsp"), flatten=True, netlist=True))
            keys.append((pol, var))
            if layer_jobs:
                # each layer engine alone (rtl/layers/*.v), hierarchy kept: stat per submodule
                for l in builds[pol]["layers"]:
                    jobs.append(SynthJob(f"{pol}/{var}/{l['layer']}", [rtl / l["file"]], l["module"], board.family,
                                         rep_dir / policy_dir(pol) / f"synth-{board.family}-{var}-layers" / l["module"],
                                         dsp=(var == "dsp"), flatten=False))
                    keys.append((pol, var, l["layer"]))
    say(f"{len(jobs)} synthesis jobs on {workers} worker(s)")
    pnr_futures = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    results = run_many(jobs, workers=workers, progress=progress, desc="yosys")
    for key, job, res in zip(keys, jobs, results):
        if len(key) == 3:
            pol, var, layer = key
            eng = doc["policy"][pol].setdefault("engines", {}).setdefault(var, {})
            eng[layer] = ({"ok": True, "total": res.total, "modules": res.modules, "instances": res.instances,
                           "seconds": round(res.seconds, 1)} if res.ok else {"ok": False, "error": res.error})
            continue
        pol, var = key
        entry = doc["policy"][pol].setdefault("synth", {})
        if not res.ok:
            entry[var] = {"ok": False, "error": res.error}
            continue
        split = split_netlist(job.out_dir / "netlist.json", board.family, top=job.top, group=_group)
        module_to_layer = {l["module"]: l["layer"] for l in builds[pol]["layers"]}
        per_layer = {}
        for mod, cats in split.items():
            per_layer[module_to_layer.get(mod, "rest" if mod == "rest" else mod)] = {
                "categories": cats, "total": _sum(cats)}
        entry[var] = {"ok": True, "total": res.total, "seconds": round(res.seconds, 1), "layers": per_layer,
                      "script": res.script, "dir": str(job.out_dir),
                      "fits": board.fits({"lut": res.total["lut"], "ff": res.total["ff"], "dsp": res.total["dsp"],
                                          "bram_bits": res.total["bram_bits"]})}
        doc["script"] = res.script
    # -- place and route -------------------------------------------------------------------
    if pnr and board.has_open_pnr:
        from .pnr import harness_params, place_and_route

        pvar = "dsp" if "dsp" in variants else variants[0]
        for pol in policies:
            params = harness_params(builds[pol])
            d = rep_dir / policy_dir(pol)
            pnr_futures[pol] = pool.submit(place_and_route, board, d / "rtl", d / f"pnr-{board.family}-{pvar}",
                                           params, dsp=(pvar == "dsp"), clock_mhz=pnr_clock_mhz,
                                           router=pnr_router)
        say(f"place and route ({len(pnr_futures)} runs, variant {pvar}) ...")
        for pol, fut in pnr_futures.items():
            r = fut.result()
            doc["policy"][pol]["pnr"] = r
            say(f"{pol}: fits={r['fits']} packed {packed_summary(r.get('packed_utilization'))} "
                f"fmax={r['fmax_mhz']} MHz ({r['seconds']} s)")
        from .pnr import _tool

        doc["tools"]["nextpnr"] = _tool_version(_tool(f"yowasp-nextpnr-{board.family}"))
    elif board.family == "xc7":
        from .pnr import harness_params, vivado_plan

        for pol in policies:
            d = rep_dir / policy_dir(pol)
            doc["policy"][pol]["vivado"] = vivado_plan(board, d / "rtl", d / "vivado", harness_params(builds[pol]))
    pool.shutdown()
    # threshold storage as built, from build.json
    for pol in policies:
        for l in builds[pol]["layers"]:
            if l.get("threshold_bits"):
                doc["policy"][pol]["estimate"][l["layer"]]["threshold_storage_bits"] = threshold_storage_bits(
                    plan, plan.layer(l["layer"]), l["threshold_bits"])
    return _finish(doc, rep_dir, plan, board, t0, say)


def _tool_version(exe: str) -> str:
    import subprocess

    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception as exc:  # a version string is informational only
        return f"unknown ({exc})"


# -- savings ----------------------------------------------------------------------------------
def savings(doc: dict, base: str = "exact") -> dict:
    """Per variant, per other policy: per layer and category ``other / base`` ratios and deltas."""
    out = {}
    pols = doc["policies"]
    if base not in pols:
        return out
    for var in doc["variants"]:
        b = doc["policy"][base].get("synth", {}).get(var)
        if not b or not b.get("ok"):
            continue
        for other in pols:
            if other == base:
                continue
            o = doc["policy"][other].get("synth", {}).get(var)
            if not o or not o.get("ok"):
                continue
            rows = {}
            for layer in b["layers"]:
                if layer not in o["layers"]:
                    continue
                cats = {}
                for cat in CATEGORIES + ("total",):
                    bv = b["layers"][layer]["total"] if cat == "total" else b["layers"][layer]["categories"][cat]
                    ov = o["layers"][layer]["total"] if cat == "total" else o["layers"][layer]["categories"][cat]
                    cats[cat] = {k: {"base": bv[k], "other": ov[k], "delta": ov[k] - bv[k], "ratio": _ratio(ov[k], bv[k])}
                                 for k in DELTA_KEYS}
                ts_b = doc["policy"][base]["estimate"].get(layer, {}).get("threshold_storage_bits", 0)
                ts_o = doc["policy"][other]["estimate"].get(layer, {}).get("threshold_storage_bits", 0)
                cats["thresholds"]["storage_bits"] = {"base": ts_b, "other": ts_o, "delta": ts_o - ts_b,
                                                      "ratio": _ratio(ts_o, ts_b)}
                rows[layer] = cats
            tot = {k: {"base": b["total"][k], "other": o["total"][k], "delta": o["total"][k] - b["total"][k],
                       "ratio": _ratio(o["total"][k], b["total"][k])} for k in DELTA_KEYS}
            fb = doc["policy"][base].get("pnr", {}).get("fmax_mhz")
            fo = doc["policy"][other].get("pnr", {}).get("fmax_mhz")
            tot["fmax_mhz"] = {"base": fb, "other": fo, "ratio": _ratio(fb, fo) if fb and fo else None}
            out.setdefault(var, {})[other] = {"layers": rows, "total": tot}
    return out


def _sum_layers(s: dict, cat: str, key: str) -> tuple[int, int]:
    base = sum(c[cat][key]["base"] for c in s["layers"].values())
    other = sum(c[cat][key]["other"] for c in s["layers"].values())
    return base, other


def targets(doc: dict, against: str = "fixed:32") -> list[dict]:
    """issue 7's targets of ``exact`` against ``against``: met or not, with the numbers."""
    out = []
    sv = doc.get("savings", {})
    for var, others in sv.items():
        s = others.get(against)
        if not s:
            continue
        b, o = _sum_layers(s, "reduction", "ff")
        out.append({"what": f"reduction-datapath FFs ({var} build)", "base": b, "other": o,
                    "ratio": _ratio(o, b), "target": 1.5})
        # the layers trained for a target P (A2Q/A2Q+): where the narrow accumulators come from
        trained = {l: s["layers"][l] for l in doc["widths"] if l in s["layers"] and doc["widths"][l]["target"] is not None}
        if trained and len(trained) < len([l for l in s["layers"] if l in doc["widths"]]):
            sub = {"layers": trained}
            b, o = _sum_layers(sub, "reduction", "ff")
            out.append({"what": f"reduction-datapath FFs, layers with target P ({', '.join(trained)}; {var})",
                        "base": b, "other": o, "ratio": _ratio(o, b), "target": 1.5})
            if var == "dsp" and doc["board"]["family"] == "ecp5":
                b = sum(c["total"]["lut"]["base"] for c in trained.values())
                o = sum(c["total"]["lut"]["other"] for c in trained.values())
                out.append({"what": f"LUTs, layers with target P ({', '.join(trained)}; ECP5, DSPs)",
                            "base": b, "other": o, "ratio": _ratio(o, b), "target": 1.5})
        tb = sum(c["thresholds"]["storage_bits"]["base"] for c in s["layers"].values())
        to = sum(c["thresholds"]["storage_bits"]["other"] for c in s["layers"].values())
        if var == doc["variants"][0] and (tb or to):
            out.append({"what": "threshold storage bits", "base": tb, "other": to, "ratio": _ratio(to, tb),
                        "target": 1.5})
        if var == "dsp" and doc["board"]["family"] == "ecp5":
            t = s["total"]["lut"]
            out.append({"what": "LUTs, whole design (ECP5, multipliers in DSPs)", "base": t["base"],
                        "other": t["other"], "ratio": t["ratio"], "target": 1.5})
            b, o = _sum_layers(s, "reduction", "lut")
            b2, o2 = _sum_layers(s, "thresholds", "lut")
            out.append({"what": "LUTs, reduction datapath + thresholds (ECP5, DSPs)", "base": b + b2,
                        "other": o + o2, "ratio": _ratio(o + o2, b + b2), "target": 1.5})
    for t in out:
        t["met"] = bool(t["ratio"] is not None and t["ratio"] >= t["target"])
    return out


def rerender(rep_dir: Path) -> dict:
    """Recompute savings, targets, plots and report.md from an existing report.json."""
    rep_dir = Path(rep_dir)
    doc = json.loads((rep_dir / "report.json").read_text())
    plan = Plan.load(doc["plan"]["dir"])
    for pol in doc["policies"]:
        bj = rep_dir / policy_dir(pol) / "rtl" / "build.json"
        built = {l["layer"]: l for l in json.loads(bj.read_text())["layers"]} if bj.exists() else None
        doc["policy"][pol]["estimate"] = estimate_layers(plan, pol, doc["board"]["family"], built=built)
    _coefficient_note(doc)
    doc["savings"] = savings(doc)
    doc["targets"] = targets(doc)
    doc["estimator"] = _estimator_error(doc)
    doc["plots"] = write_plots(doc, rep_dir)
    (rep_dir / "report.md").write_text(render_markdown(doc))
    (rep_dir / "report.json").write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    return doc


def _coefficient_note(doc: dict) -> None:
    from accumulus.boards.calibrate import coefficients_path

    data = json.loads(coefficients_path().read_text())
    doc["estimator_calibration"] = data.get("calibration", {}).get(doc["board"]["family"])


def _finish(doc, rep_dir: Path, plan: Plan, board: Board, t0: float, say) -> dict:
    _coefficient_note(doc)
    doc["savings"] = savings(doc)
    doc["targets"] = targets(doc)
    doc["estimator"] = _estimator_error(doc)
    doc["seconds"] = round(time.monotonic() - t0, 1)
    (rep_dir / "report.json").write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    try:
        plots = write_plots(doc, rep_dir)
    except ImportError as exc:
        plots = []
        say(f"no plots: {exc} (install matplotlib)")
    doc["plots"] = plots
    (rep_dir / "report.md").write_text(render_markdown(doc))
    (rep_dir / "report.json").write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    say(f"wrote {rep_dir / 'report.json'}, {rep_dir / 'report.md'} and {len(plots)} plot(s) in {doc['seconds']} s")
    return doc


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _estimator_error(doc) -> dict:
    """Estimator LUT/FF against Yosys (LUT-only variant), per policy and layer."""
    out = {}
    for pol in doc["policies"]:
        syn = doc["policy"][pol].get("synth", {}).get("lut")
        if not syn or not syn.get("ok"):
            continue
        rows = {}
        for layer, est in doc["policy"][pol]["estimate"].items():
            y = syn["layers"].get(layer)
            if not y:
                continue
            rows[layer] = {"full_adders": doc["widths"].get(layer, {}).get("full_adders"),
                           "lut_est": round(est["lut"]), "lut_yosys": y["total"]["lut"],
                           "lut_err": round(est["lut"] / y["total"]["lut"] - 1, 3) if y["total"]["lut"] else None,
                           "ff_est": round(est["ff"]), "ff_yosys": y["total"]["ff"],
                           "ff_err": round(est["ff"] / y["total"]["ff"] - 1, 3) if y["total"]["ff"] else None}
        out[pol] = rows
    return out


# -- plots ------------------------------------------------------------------------------------
def write_plots(doc: dict, rep_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    layers = list(doc["widths"])
    x = np.arange(len(layers))
    # widths per layer
    fig, ax = plt.subplots(figsize=(7, 3.5))
    kinds = [("datatype", "data-type bound"), ("a2q", "A2Q"), ("a2q_plus", "A2Q+"), ("exact", "exact"),
             ("target", "target P")]
    wbar = 0.16
    for i, (k, label) in enumerate(kinds):
        vals = [doc["widths"][l][k] if doc["widths"][l][k] is not None else 0 for l in layers]
        ax.bar(x + (i - 2) * wbar, vals, wbar, label=label)
    ax.set_xticks(x, layers)
    ax.set_ylabel("accumulator bits (widest channel)")
    ax.set_title("Accumulator widths per layer")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(rep_dir / "widths.png", dpi=110)
    plt.close(fig)
    files.append("widths.png")
    # LUT and DSP per layer per policy
    for key, fname in (("lut", "lut_per_layer.png"), ("dsp", "dsp_per_layer.png")):
        series = []
        for pol in doc["policies"]:
            for var, syn in doc["policy"][pol].get("synth", {}).items():
                if syn.get("ok"):
                    series.append((f"{pol} ({var})", [syn["layers"].get(l, {}).get("total", {}).get(key, 0)
                                                     for l in layers]))
        if not series or (key == "dsp" and not any(any(v) for _, v in series)):
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        wbar = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            ax.bar(x + (i - (len(series) - 1) / 2) * wbar, vals, wbar, label=label)
        ax.set_xticks(x, layers)
        ax.set_ylabel(key.upper())
        ax.set_title(f"{key.upper()} per layer and policy (Yosys, {doc['board']['id']})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(rep_dir / fname, dpi=110)
        plt.close(fig)
        files.append(fname)
    # estimator vs Yosys
    pts = [(r["lut_yosys"], r["lut_est"], pol) for pol, rows in doc.get("estimator", {}).items() for r in rows.values()]
    if pts:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for pol in doc["policies"]:
            p = [(a, b) for a, b, q in pts if q == pol]
            if p:
                ax.scatter(*zip(*p), label=pol)
        hi = max(max(a, b) for a, b, _ in pts) * 1.1
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.plot([0, hi], [0, hi * 1.15], "k:", lw=0.6)
        ax.plot([0, hi], [0, hi * 0.85], "k:", lw=0.6)
        ax.set_xlabel("Yosys LUT (per layer)")
        ax.set_ylabel("compiler/cost.py LUT")
        ax.set_title("Estimator vs Yosys (dotted: ±15%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(rep_dir / "estimator.png", dpi=110)
        plt.close(fig)
        files.append("estimator.png")
    return files


# -- markdown ---------------------------------------------------------------------------------
def _fmt_ratio(r):
    if r is None:
        return "-"
    if r == float("inf"):
        return "inf"
    return f"{r:.2f}x"


def verification_summary(plan_doc: dict) -> str:
    """One line on how the plan's golden model was checked (``compile`` records it)."""
    v = plan_doc.get("verification")
    if not v:
        return "not recorded (plan compiled before verification existed)"
    if v.get("skipped"):
        return f"SKIPPED ({v.get('reason', '--no-verify')}): the golden model was not checked against a reference"
    ties = f", {v['samples_with_ties']} with float ties" if v.get("samples_with_ties") else ""
    return f"golden model == {v['reference']} on {v['samples']} inputs{ties}"


def render_markdown(doc: dict) -> str:
    b = doc["board"]
    lines = [f"# accumulus report: {b.get('name', b['id'])} ({b['part']}, {b['family']})", ""]
    lines.append(f"Plan: {doc['plan']['source']}  ")
    lines.append(f"Policies: {', '.join(doc['policies'])}; synthesis variants: {', '.join(doc['variants'])} "
                 "(`lut`: multipliers in LUTs; `dsp`: hard multipliers)  ")
    tools = ", ".join(f"{k} {v}" for k, v in doc["tools"].items())
    lines.append(f"Tools: {tools or 'none (estimate only)'}  ")
    lines.append(f"Golden model verification: {doc.get('verification') or 'not recorded'}")
    lines.append("")
    lines.append("## Accumulator widths (widest channel per layer)")
    lines.append("| layer | K | N | PE | SIMD | data-type | A2Q | A2Q+ | exact | target P | per-PE exact |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for l, w in doc["widths"].items():
        lines.append(f"| {l} | {w['fan_in']} | {w['channels']} | {w['pe']} | {w['simd']} | {w['datatype']} | {w['a2q']} | "
                     f"{w['a2q_plus']} | {w['exact']} | {w['target'] if w['target'] is not None else '-'} | "
                     f"{w['pe_acc_bits']} |")
    lines.append("")
    # fit and fmax
    lines.append("## Fit and clock")
    lines.append("| policy | variant | LUT | FF | carry | DSP | BRAM bits | fits (Yosys vs budget) | packed (nextpnr) | PnR fits | Fmax MHz |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    bud = b["budget"]
    for pol in doc["policies"]:
        p = doc["policy"][pol]
        for var, syn in p.get("synth", {}).items():
            if not syn.get("ok"):
                lines.append(f"| {pol} | {var} | synthesis failed | | | | | | | | |")
                continue
            t = syn["total"]
            fits = all(v["fits"] for v in syn["fits"].values())
            pr = p.get("pnr") if p.get("pnr", {}).get("dsp", False) == (var == "dsp") else None
            pfit = ("yes" if pr["fits"] else "no") if pr else "-"
            fmax = pr["fmax_mhz"] if pr and pr.get("fmax_mhz") else "-"
            packed = packed_summary(pr.get("packed_utilization") if pr else None)
            lines.append(f"| {pol} | {var} | {t['lut']} / {bud['lut']} | {t['ff']} / {bud['ff']} | {t['carry']} | "
                         f"{t['dsp']} / {bud['dsp']} | {t['bram_bits']} / {bud['bram_bits']} | {'yes' if fits else 'NO'} | "
                         f"{packed} | {pfit} | {fmax} |")
    if b["family"] in ("ice40", "ecp5"):
        lines.append("")
        lines.append("packed: the fullest logic cell kind after nextpnr's packer (`--pack-only`), which is what "
                     "the device must hold; it exceeds Yosys' LUT count by the carry feed-in/feed-out cells and "
                     "the flip-flops that cannot share a slice with their driver. Placement above ~90% often fails.")
    if b["family"] == "xc7":
        lines.append("")
        lines.append("Xilinx: no open place and route; Yosys `synth_xilinx` numbers above (LUT = LUT1..LUT6), "
                     "Vivado TCL/XDC written per policy:")
        for pol in doc["policies"]:
            v = doc["policy"][pol].get("vivado")
            if v:
                lines.append(f"- {pol}: `{v['dir']}` ({', '.join(v['tcl'] + v['xdc'])}); run: `{v['run']}`")
    lines.append("")
    if doc.get("targets"):
        lines.append("## Targets: `exact` against `fixed:32`")
        lines.append("| what | exact | fixed:32 | ratio | target | met |")
        lines.append("|---|---|---|---|---|---|")
        for t in doc["targets"]:
            lines.append(f"| {t['what']} | {t['base']} | {t['other']} | {_fmt_ratio(t['ratio'])} | "
                         f">= {t['target']}x | {'yes' if t['met'] else 'NO'} |")
        if not all(t["met"] for t in doc["targets"]):
            lines.append("")
            lines.append("Where a target is missed, the per-layer tables below show where the resources go: "
                         "parts that do not depend on the accumulator width (multipliers, rest) dilute the ratio.")
        lines.append("")
    # savings
    for var, others in doc.get("savings", {}).items():
        for other, s in others.items():
            lines.append(f"## Savings of `exact` against `{other}` ({var} build)")
            lines.append("Ratio = resources under `" + other + "` / resources under `exact` (>1: exact saves).")
            lines.append("")
            lines.append("| layer | part | LUT | FF | carry | DSP | threshold storage bits |")
            lines.append("|---|---|---|---|---|---|---|")
            order = [l for l in doc["widths"] if l in s["layers"]] + sorted(l for l in s["layers"]
                                                                          if l not in doc["widths"])
            for layer in order:
                cats = s["layers"][layer]
                for cat in CATEGORIES + ("total",):
                    c = cats[cat]
                    if cat != "total" and not any(c[k]["base"] or c[k]["other"] for k in ("lut", "ff", "carry", "dsp")):
                        continue
                    ts = cats["thresholds"].get("storage_bits") if cat == "thresholds" else None
                    cell = lambda k: f"{c[k]['base']} -> {c[k]['other']} ({_fmt_ratio(c[k]['ratio'])})"  # noqa: E731
                    tss = f"{ts['base']} -> {ts['other']} ({_fmt_ratio(ts['ratio'])})" if ts else ""
                    lines.append(f"| {layer} | {cat} | {cell('lut')} | {cell('ff')} | {cell('carry')} | {cell('dsp')} | {tss} |")
            t = s["total"]
            tsb = sum(c["thresholds"]["storage_bits"]["base"] for c in s["layers"].values())
            tso = sum(c["thresholds"]["storage_bits"]["other"] for c in s["layers"].values())
            lines.append(f"| **total** | | {t['lut']['base']} -> {t['lut']['other']} ({_fmt_ratio(t['lut']['ratio'])}) | "
                         f"{t['ff']['base']} -> {t['ff']['other']} ({_fmt_ratio(t['ff']['ratio'])}) | "
                         f"{t['carry']['base']} -> {t['carry']['other']} ({_fmt_ratio(t['carry']['ratio'])}) | "
                         f"{t['dsp']['base']} -> {t['dsp']['other']} ({_fmt_ratio(t['dsp']['ratio'])}) | "
                         f"{tsb} -> {tso} ({_fmt_ratio(_ratio(tso, tsb))}) |")
            fm = t.get("fmax_mhz", {})
            if fm.get("base"):
                lines.append("")
                lines.append(f"Fmax: exact {fm['base']} MHz, {other} {fm['other']} MHz.")
            lines.append("")
    # estimator
    if doc.get("estimator"):
        lines.append("## Estimator (compiler/cost.py) against Yosys, LUT-only build")
        cal = doc.get("estimator_calibration")
        lines.append(f"Coefficients: {'calibrated by boards/calibrate.py on ' + str(cal['configs']) + ' engines, max LUT error ' + format(cal['max_abs_lut_error'], '.1%') + ' there' if cal else 'not calibrated for this family (hand-set defaults)'}.")
        lines.append("")
        lines.append("Full adders: Sakr & Shanbhag's count D·B_A·B_W + (D-1)(B_A+B_W+ceil(log2 D)-1) per dot "
                     "product, times the dot products per frame (compiler/cost.py).")
        lines.append("")
        lines.append("| policy | layer | full adders | LUT est | LUT Yosys | error | FF est | FF Yosys | error |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for pol, rows in doc["estimator"].items():
            for layer, r in rows.items():
                e = f"{r['lut_err']:+.1%}" if r["lut_err"] is not None else "-"
                f = f"{r['ff_err']:+.1%}" if r["ff_err"] is not None else "-"
                fa = r.get("full_adders")
                lines.append(f"| {pol} | {layer} | {'-' if fa is None else fa} | {r['lut_est']} | {r['lut_yosys']} | {e} | {r['ff_est']} | "
                             f"{r['ff_yosys']} | {f} |")
        lines.append("")
    elif doc["options"]["estimate_only"]:
        lines.append("## Estimate (compiler/cost.py, no synthesis)")
        lines.append("| policy | layer | engine | full adders | LUT | FF | DSP | BRAM bits | threshold storage bits |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for pol in doc["policies"]:
            for layer, e in doc["policy"][pol]["estimate"].items():
                fa = doc["widths"].get(layer, {}).get("full_adders", "-")
                lines.append(f"| {pol} | {layer} | {e.get('engine', 'rom')} | {fa} | {e['lut']:.0f} | {e['ff']:.0f} | {e['dsp']:.0f} | {e['bram_bits']:.0f} | "
                             f"{e['threshold_storage_bits']:.0f} |")
        lines.append("")
    lines.append("## How the split is made")
    lines.append("Each flat netlist is split by register cones (boards/split.py): a LUT or carry is charged to the "
                 "registers its output reaches first: product registers -> multipliers; adder-tree levels, "
                 "accumulators and result registers -> reduction datapath; anything in the requantizer -> thresholds "
                 "(threshold storage bits = channels x levels x stored width, from build.json); the rest (input "
                 "buffer, channel-order restore, activation hops, control, ArgMax, FIFOs) -> rest.")
    if doc.get("script"):
        lines.append("")
        lines.append("Yosys script (same for every policy):")
        lines.append("```")
        lines.append(doc["script"].rstrip())
        lines.append("```")
    for p in doc.get("plots", []):
        lines.append(f"![{p}]({p})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m accumulus.boards.report --rerender DIR/reports
    import argparse

    ap = argparse.ArgumentParser(prog="python -m accumulus.boards.report")
    ap.add_argument("--rerender", required=True, metavar="DIR/reports",
                    help="recompute savings, targets, plots and report.md from report.json")
    a = ap.parse_args()
    rerender(Path(a.rerender))
    print(f"rewrote {Path(a.rerender) / 'report.md'}")

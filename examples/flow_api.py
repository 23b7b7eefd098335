"""The flow from Python: the same stages and options as `accumulus flow`.

    .venv/bin/python examples/flow_api.py build/api
"""
import sys

from accumulus import flow

out = sys.argv[1] if len(sys.argv) > 1 else "build/api"

config = flow.load_config(None)                 # the built-in digits-mlp example
config["train"].update(epochs=5)
config["sim"].update(frames=20)
config["report"].update({"no-pnr": True})       # synthesis only: quicker
flow.run(config, out=out)

# Stages one at a time, options exactly as on the command line:
flow.build(out, **{"acc-policy": "datatype"})   # re-builds with data-type-sized accumulators
print(flow.summary(out))

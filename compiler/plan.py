"""The plan: ``plan.json`` + ``plan.npz``, the compiler's contract with hw/ and sim/.

Documented in docs/plan.md; validated against ``schema/plan.schema.json`` on load and
before save. Layers stay plain JSON dictionaries (what is on disk is what the hardware
generator reads); typed accessors below keep the parsing in one place.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from accumulus.errors import UserError

from .types import IntType

FORMAT_VERSION = 1
LAYER_KINDS = ("matvec", "conv", "requant", "maxpool", "avgpool", "add", "argmax", "reorder")
MAC_KINDS = ("matvec", "conv")


def _schema() -> dict:
    text = resources.files("accumulus.compiler").joinpath("schema/plan.schema.json").read_text()
    return json.loads(text)


def validate(doc: dict, where: str = "plan.json") -> None:
    import jsonschema

    try:
        jsonschema.validate(doc, _schema())
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path)
        raise UserError(f"{where}: invalid plan at '{path}': {exc.message}") from None
    if doc["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"{where}: plan format_version {doc['format_version']} is not {FORMAT_VERSION}; "
            "re-run 'accumulus compile' with this version of accumulus"
        )


@dataclass
class Plan:
    doc: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    # -- access ---------------------------------------------------------------------------
    @property
    def layers(self) -> list[dict]:
        return self.doc["layers"]

    def layer(self, name: str) -> dict:
        for layer in self.layers:
            if layer["name"] == name:
                return layer
        raise KeyError(f"plan has no layer '{name}'")

    def tensor(self, name: str) -> dict:
        return self.doc["tensors"][name]

    def tensor_type(self, name: str) -> IntType:
        return IntType.from_json(self.doc["tensors"][name]["type"])

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.doc["tensors"][name]["shape"])

    def array(self, key: str) -> np.ndarray:
        try:
            return self.arrays[key]
        except KeyError:
            raise UserError(f"plan.npz has no array '{key}' (plan.json and plan.npz do not belong together)") from None

    @property
    def input_name(self) -> str:
        return self.doc["input"]["tensor"]

    @property
    def output_name(self) -> str:
        return self.doc["output"]["tensor"]

    def producers(self) -> dict[str, dict]:
        return {layer["output"]: layer for layer in self.layers}

    def consumers(self, tensor: str) -> list[dict]:
        return [layer for layer in self.layers if tensor in layer["inputs"]]

    # -- disk -----------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        validate(self.doc)
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in self.arrays.items()})
        npz_bytes = buf.getvalue()
        doc = dict(self.doc)
        doc["arrays_sha256"] = hashlib.sha256(npz_bytes).hexdigest()
        (out_dir / "plan.npz").write_bytes(npz_bytes)
        (out_dir / "plan.json").write_text(json.dumps(doc, indent=1) + "\n")
        self.doc = doc
        return out_dir / "plan.json", out_dir / "plan.npz"

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Load from a project folder or from a plan.json path (plan.npz beside it)."""
        path = Path(path)
        json_path = path / "plan.json" if path.is_dir() else path
        npz_path = json_path.with_suffix(".npz")
        if not json_path.exists():
            raise UserError(
                f"{json_path} not found: the plan is made by the compile stage; "
                f"run 'accumulus compile MODEL.onnx --out {json_path.parent}'"
            )
        try:
            doc = json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{json_path}: not a readable JSON plan ({exc}); re-run 'accumulus compile'") from None
        validate(doc, str(json_path))
        if not npz_path.exists():
            raise UserError(f"{npz_path} not found beside {json_path.name}; re-run 'accumulus compile'")
        raw = npz_path.read_bytes()
        want = doc.get("arrays_sha256")
        if want and hashlib.sha256(raw).hexdigest() != want:
            raise UserError(f"{npz_path} does not match {json_path.name} (hash differs); re-run 'accumulus compile'")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(doc, arrays)


# -- typed views used by hw/ and golden ------------------------------------------------------
def requant_out_type(requant: dict) -> IntType:
    return IntType.from_json(requant["out_type"])


def layer_output_type(plan: Plan, layer: dict) -> IntType:
    return plan.tensor_type(layer["output"])

"""The CPU model's graph with two of ONNX Runtime's fusions taken apart again.

ONNX Runtime's transformer optimizer fuses each residual add + LayerNorm into `SkipLayerNormalization` and
each bias add + GELU into `BiasGelu`. On the CPU those two fused kernels are slower than the ops they
replace (`Add`, `LayerNormalization`, `Gelu`): profiled on the int8 model as quantized, 256-token slices,
`SkipLayerNormalization` took a quarter of the time and `BiasGelu` a tenth (`python bench/ops.py --fused
FILE`); unfused, the served path labeled 1.2-1.5x more texts per second in two runs of `python
bench/model.py` on 2026-12-01. The labeler's CPU sessions keep ONNX Runtime from fusing them again
(`inference.labeler.CPU_UNFUSED`).

    python -m inference.training.cpu_graph MODEL.onnx [--output OUT.onnx]

rewrites a file (in place without --output); `finsent export` applies it to the int8 file it ships."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# SkipLayerNormalization's own default (onnxruntime's contrib op schema).
DEFAULT_EPSILON = 1e-12
# LayerNormalization is a standard ONNX op from opset 17 on.
LAYER_NORM_OPSET = 17


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _epsilon(node: Any) -> float:
    return next((float(a.f) for a in node.attribute if a.name == "epsilon"), DEFAULT_EPSILON)


class _FreshNames:
    """Names for the new nodes and tensors that nothing in the graph uses yet (exporters leave nodes
    unnamed, and ONNX Runtime refuses a graph with two nodes of one name)."""

    def __init__(self, graph: Any) -> None:
        self.taken: set[str] = {n.name for n in graph.node}
        self.taken.update(name for n in graph.node for name in (*n.input, *n.output))
        self.taken.update(t.name for t in graph.initializer)
        self.taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))

    def __call__(self, node: Any, suffix: str) -> str:
        base = f"{node.name or node.output[0]}_{suffix}"
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


def _skip_layer_norm(node: Any, fresh: _FreshNames) -> list[Any] | None:
    """Add(input, bias) -> Add(skip) -> LayerNormalization; None when the node uses what the plain ops
    cannot give (its mean / inverse-std / sum outputs) or has no gamma."""
    from onnx import helper

    inputs = list(node.input) + [""] * (5 - len(node.input))
    x, skip, gamma, beta, bias = inputs[:5]
    if any(node.output[1:]) or not (x and skip and gamma):
        return None
    nodes = []
    summed = x
    if bias:
        summed = fresh(node, "with_bias")
        nodes.append(helper.make_node("Add", [x, bias], [summed], name=fresh(node, "bias_add")))
    residual = fresh(node, "residual")
    nodes.append(helper.make_node("Add", [summed, skip], [residual], name=fresh(node, "residual_add")))
    norm_inputs = [residual, gamma] + ([beta] if beta else [])
    nodes.append(
        helper.make_node(
            "LayerNormalization",
            norm_inputs,
            [node.output[0]],
            name=fresh(node, "layer_norm"),
            axis=-1,
            epsilon=_epsilon(node),
        )
    )
    return nodes


def _bias_gelu(node: Any, fresh: _FreshNames) -> list[Any]:
    """Add(input, bias) -> Gelu (the com.microsoft op: erf GELU, what BiasGelu computes)."""
    from onnx import helper

    added = fresh(node, "with_bias")
    return [
        helper.make_node("Add", list(node.input[:2]), [added], name=fresh(node, "bias_add")),
        helper.make_node(
            "Gelu", [added], list(node.output), name=fresh(node, "gelu"), domain="com.microsoft"
        ),
    ]


def unfuse_for_cpu(model: Any) -> dict[str, int]:
    """Rewrite `model` (an onnx.ModelProto) in place; returns how many nodes of each fused op were taken
    apart. Node order stays topological: each replacement sits where its fused node was. Subgraphs
    (If/Loop bodies) are left as they are: the exported encoders have none."""
    rewritten = {"SkipLayerNormalization": 0, "BiasGelu": 0}
    layer_norm_ok = _opset(model) >= LAYER_NORM_OPSET
    fresh = _FreshNames(model.graph)
    nodes: list[Any] = []
    for node in model.graph.node:
        replacement = None
        if node.domain == "com.microsoft" and node.op_type == "SkipLayerNormalization" and layer_norm_ok:
            replacement = _skip_layer_norm(node, fresh)
        elif node.domain == "com.microsoft" and node.op_type == "BiasGelu" and len(node.input) == 2:
            replacement = _bias_gelu(node, fresh)
        if replacement is None:
            nodes.append(node)
        else:
            rewritten[node.op_type] += 1
            nodes.extend(replacement)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def rewrite_file(path: Path, output: Path | None = None) -> dict[str, int]:
    """unfuse_for_cpu() on an ONNX file, checked by onnx's checker before it is written."""
    import onnx

    model = onnx.load(str(path))
    counts = unfuse_for_cpu(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(output or path))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--output", type=Path, default=None, help="default: rewrite MODEL in place")
    args = parser.parse_args(argv)
    try:
        counts = rewrite_file(args.model, args.output)
    except OSError as exc:
        print(f"cpu_graph: {exc.filename or args.model}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # onnx's parse and check errors (protobuf's DecodeError, ValidationError)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        print(f"cpu_graph: {args.model}: not a usable ONNX model ({reason})", file=sys.stderr)
        return 2
    print(", ".join(f"{op}: {n} taken apart" for op, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

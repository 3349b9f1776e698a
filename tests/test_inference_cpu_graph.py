"""The CPU graph rewrite (inference.training.cpu_graph) on small graphs run by ONNX Runtime: same outputs,
the fused ops gone, and the labeler's CPU sessions not fusing them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.labeler import _session_options, cpu_session
from inference.model_dir import default_model_dir

onnx = pytest.importorskip("onnx", reason="the `train` extra is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from inference.training.cpu_graph import main, rewrite_file, unfuse_for_cpu  # noqa: E402

HIDDEN = 8
FUSED = {"SkipLayerNormalization", "BiasGelu"}


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "gamma": rng.normal(1.0, 0.1, HIDDEN).astype(np.float32),
        "beta": rng.normal(0.0, 0.1, HIDDEN).astype(np.float32),
        "bias": rng.normal(0.0, 0.5, HIDDEN).astype(np.float32),
        "gelu_bias": rng.normal(0.0, 0.5, HIDDEN).astype(np.float32),
    }


def fused_model(*, opset: int = 17, extra_output: bool = False, beta: bool = True) -> Any:
    """x, skip -> SkipLayerNormalization -> BiasGelu -> y, as the transformer optimizer leaves them."""
    weights = _weights(0)
    sln_inputs = ["x", "skip", "gamma", "beta" if beta else "", "bias"]
    sln_outputs = ["normed"] + (["", "", "summed"] if extra_output else [])
    nodes = [
        helper.make_node(
            "SkipLayerNormalization",
            sln_inputs,
            sln_outputs,
            name="sln",
            domain="com.microsoft",
            epsilon=1e-5,
        ),
        helper.make_node("BiasGelu", ["normed", "gelu_bias"], ["y"], name="gelu", domain="com.microsoft"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", HIDDEN])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["b", "s", HIDDEN]))
    graph = helper.make_graph(
        nodes,
        "fused",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", "s", HIDDEN])
            for name in ("x", "skip")
        ],
        outputs,
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )


def run(model: Any, path: Path) -> list[np.ndarray]:
    onnx.save(model, str(path))
    session = cpu_session(path, _session_options(1, "all"))
    rng = np.random.default_rng(1)
    feed = {k: rng.normal(0, 2, (2, 3, HIDDEN)).astype(np.float32) for k in ("x", "skip")}
    return list(session.run(None, feed))


def op_types(model: Any) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("beta", [True, False])
def test_the_rewrite_takes_both_fusions_apart_and_keeps_the_outputs(tmp_path: Path, beta: bool) -> None:
    model = fused_model(beta=beta)
    before = run(model, tmp_path / "fused.onnx")
    assert unfuse_for_cpu(model) == {"SkipLayerNormalization": 1, "BiasGelu": 1}
    onnx.checker.check_model(model)
    assert not op_types(model) & FUSED
    assert {"Add", "LayerNormalization", "Gelu"} <= op_types(model)
    after = run(model, tmp_path / "unfused.onnx")
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)


def test_unnamed_fused_nodes_get_names_of_their_own(tmp_path: Path) -> None:
    """Exporters may leave nodes unnamed: names made from the node's name alone were "_bias_add" for
    every one, and ONNX Runtime refuses a graph with two nodes of one name (onnx's checker does not)."""
    model = fused_model()
    first = model.graph.node[0]
    second = onnx.helper.make_node(
        "SkipLayerNormalization",
        ["y", "skip", "gamma", "beta", "bias"],
        ["z"],
        domain="com.microsoft",
        epsilon=1e-5,
    )
    first.name = ""
    model.graph.node[1].name = ""
    model.graph.node.append(second)
    model.graph.output[0].name = "z"
    before = run(model, tmp_path / "fused.onnx")
    assert unfuse_for_cpu(model) == {"SkipLayerNormalization": 2, "BiasGelu": 1}
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and all(names)
    after = run(model, tmp_path / "unfused.onnx")  # ONNX Runtime loads it
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)


def test_a_fused_node_whose_extra_outputs_are_used_is_left_as_it_is(tmp_path: Path) -> None:
    """The sum output feeds the next residual in some fusions: plain ops would not produce it."""
    model = fused_model(extra_output=True)
    assert unfuse_for_cpu(model) == {"SkipLayerNormalization": 0, "BiasGelu": 1}
    assert "SkipLayerNormalization" in op_types(model)
    before = run(fused_model(extra_output=True), tmp_path / "fused.onnx")
    after = run(model, tmp_path / "unfused.onnx")
    for a, b in zip(after, before, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_before_opset_17_there_is_no_layer_normalization_to_use(tmp_path: Path) -> None:
    model = fused_model(opset=16)
    assert unfuse_for_cpu(model) == {"SkipLayerNormalization": 0, "BiasGelu": 1}
    onnx.checker.check_model(model)


def test_the_labelers_cpu_sessions_do_not_fuse_them_again(tmp_path: Path) -> None:
    """ONNX Runtime would turn Add + LayerNormalization back into SkipLayerNormalization (and Add + Gelu
    into BiasGelu) at session start; the graph it runs is saved here and read back."""
    model = fused_model()
    unfuse_for_cpu(model)
    onnx.save(model, str(tmp_path / "unfused.onnx"))
    options = _session_options(1, "all")
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")
    cpu_session(tmp_path / "unfused.onnx", options)
    assert not op_types(onnx.load(str(tmp_path / "as_run.onnx"))) & FUSED


def test_the_shipped_cpu_model_has_been_rewritten() -> None:
    shipped = onnx.load(str(default_model_dir() / "model.int8.onnx"))
    assert not op_types(shipped) & FUSED
    assert sum(n.op_type == "LayerNormalization" for n in shipped.graph.node) == 12


def test_the_command_rewrites_a_file_and_says_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx.save(fused_model(), str(tmp_path / "model.onnx"))
    assert main([str(tmp_path / "model.onnx"), "--output", str(tmp_path / "out.onnx")]) == 0
    assert "SkipLayerNormalization: 1 taken apart, BiasGelu: 1 taken apart" in capsys.readouterr().out
    assert "SkipLayerNormalization" in op_types(onnx.load(str(tmp_path / "model.onnx")))  # left alone
    assert rewrite_file(tmp_path / "out.onnx") == {"SkipLayerNormalization": 0, "BiasGelu": 0}


@pytest.mark.parametrize("content", [None, b"not a protobuf", b""])
def test_the_command_says_in_one_line_what_is_wrong_with_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cpu_graph: {path}: ") and len(err.strip().splitlines()) == 1

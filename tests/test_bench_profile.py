"""`clue bench train --profile`: kernels of a profiled step, ranked by op type."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from clue_bench import profile  # noqa: E402


def _write_trace(path, events):
    """An XSpace with one host plane; ``events``: (line, name, type, start_us, dur_us)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    lines = {}
    for i, (line, name, op_type, start, dur) in enumerate(events, start=1):
        md = plane.event_metadata[i]
        md.id, md.name, md.display_name = i, name, op_type
        if line not in lines:
            lines[line] = plane.lines.add(name=line)
        lines[line].events.add(metadata_id=i, offset_ps=start * 10**6, duration_ps=dur * 10**6)
    # A device plane and a non-op event are ignored.
    space.planes.add(name="/device:GPU:0")
    md = plane.event_metadata[99]
    md.id, md.name = 99, "ExecutorState::Process"
    lines["tf_Compute/1"].events.add(metadata_id=99, offset_ps=0, duration_ps=10**12)
    path.write_bytes(space.SerializeToString())
    return str(path)


def test_rank_ops_sums_kernels_by_type_and_leaves_out_wrappers(tmp_path):
    trace = _write_trace(tmp_path / "t.xplane.pb", [
        ("tf_Compute/1", "model/dense/MatMul:MatMul", "MatMul", 0, 600),
        ("tf_Compute/2", "gradient_tape/model/dense/MatMul_1:MatMul", "MatMul", 0, 200),
        ("tf_Compute/1", "model/add:AddV2", "AddV2", 700, 50),
        ("tf_Compute/2", "gradient_tape/model/einsum/Einsum:Einsum", "Einsum", 300, 150),
        ("tf_Compute/1", "StatefulPartitionedCall:StatefulPartitionedCall",
         "StatefulPartitionedCall", 0, 5000),
    ])
    prof = profile.rank_ops(trace, steps=2, top=2)
    assert prof["op_seconds_per_step"] == pytest.approx(1000e-6 / 2)
    assert prof["matmul_share"] == pytest.approx(0.95)
    assert prof["backward_share"] == pytest.approx(0.35)
    assert [r["op"] for r in prof["by_type"]] == ["MatMul", "Einsum"]
    assert prof["by_type"][0]["share"] == pytest.approx(0.8)
    assert prof["by_type"][0]["runs_per_step"] == pytest.approx(1.0)
    assert prof["by_type"][0]["matmul"] and prof["by_type"][1]["matmul"]
    assert prof["top_names"][0] == {"op": "model/dense/MatMul (MatMul)",
                                    "share": pytest.approx(0.6)}
    text = profile.format_ranking(prof)
    assert "matrix products 95.0%" in text and "MatMul" in text


def test_kernels_are_charged_to_the_parts_of_the_step(tmp_path):
    enc = "model/encoder/child_0"
    trace = _write_trace(tmp_path / "t.xplane.pb", [
        ("tf_Compute/1", f"{enc}/feedforward_intermediate_dense/MatMul:_MklMatMul",
         "_MklMatMul", 0, 400),
        ("tf_Compute/1", f"gradient_tape/{enc}/feedforward_intermediate_dense/Gelu/mul:Mul",
         "Mul", 400, 200),
        ("tf_Compute/1", f"{enc}/feedforward_layer_norm/mul_1:Mul", "Mul", 600, 150),
        ("tf_Compute/2", f"{enc}/self_attention_layer/softmax/Softmax:_MklSoftmax",
         "_MklSoftmax", 0, 50),
        ("tf_Compute/2", "adamw/Mul_3:Mul", "Mul", 50, 100),
        ("tf_Compute/2", f"{enc}/self_attention_layer/SelectV2:SelectV2", "SelectV2", 150, 40),
        ("tf_Compute/2", f"{enc}/Cast_2:Cast", "Cast", 190, 40),
        ("tf_Compute/2", "model/GatherV2:GatherV2", "GatherV2", 230, 20),
    ])
    prof = profile.rank_ops(trace, steps=1)
    assert prof["by_part"] == {
        "matrix products": pytest.approx(0.4), "GELU": pytest.approx(0.2),
        "LayerNorm": pytest.approx(0.15), "optimizer": pytest.approx(0.1),
        "softmax": pytest.approx(0.05), "attention, other": pytest.approx(0.04),
        "casts": pytest.approx(0.04), "other": pytest.approx(0.02)}
    assert list(prof["by_part"])[:2] == ["matrix products", "GELU"]
    assert "by part: matrix products 40.0%, GELU 20.0%, LayerNorm 15.0%" in \
        profile.format_ranking(prof)


def test_a_trace_without_kernels_is_an_error(tmp_path):
    trace = _write_trace(tmp_path / "t.xplane.pb", [
        ("tf_Compute/1", "StatefulPartitionedCall:StatefulPartitionedCall",
         "StatefulPartitionedCall", 0, 5000)])
    with pytest.raises(RuntimeError, match="no TensorFlow kernel events"):
        profile.rank_ops(trace, steps=1)


def test_profiling_real_training_steps_finds_the_transformer_matmuls(tmp_path):
    from clue_bench.train import bench_train

    res = bench_train("tiny", steps=2, warmup=1, modes=["padded"],
                      profile_dir=str(tmp_path / "tb"))
    prof = res["profile"]
    assert prof["mode"] == "padded" and os.path.isfile(prof["trace"])
    assert prof["trace"].startswith(str(tmp_path / "tb"))
    assert prof["op_seconds_per_step"] > 0
    types = [r["op"] for r in prof["by_type"]]
    assert any(profile.is_matmul(t) for t in types), types
    assert 0 < prof["matmul_share"] <= 1 and 0 < prof["backward_share"] < 1
    assert sum(r["share"] for r in prof["by_type"]) <= 1 + 1e-9

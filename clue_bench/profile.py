"""Profile training steps with the TensorFlow profiler and rank the ops they ran.

`clue bench train --profile DIR` runs a few more steps of the last mode under
``tf.profiler.experimental`` after the timed ones, so the timing is not
disturbed. The trace lands in ``DIR/plugins/profile/<run>/*.xplane.pb``: open it
in TensorBoard's profile plugin (``tensorboard --logdir DIR``) for the timeline.

:func:`rank_ops` reads that file itself, with the ``XSpace`` protocol buffer
TensorFlow ships, so the top ops can be printed without the plugin. On the
host plane each TensorFlow kernel run is one event named ``"op_name:OpType"``
on an executor thread (``tf_Compute/...``). Its duration is the kernel's wall
time on that thread. Kernels on different threads overlap, so the ops' total
can exceed the steps' wall time; shares are of the ops' total. Function-call
and control-flow ops (``StatefulPartitionedCall``, ``While``, ...) only wrap
other ops and are left out, so nothing is counted twice.
"""
import collections
import glob
import os
from typing import Dict, Iterator, List, Tuple

# Ops that only wrap other ops' execution: counting them would count their body twice.
WRAPPERS = frozenset({
    "StatefulPartitionedCall", "PartitionedCall", "While", "StatelessWhile", "If",
    "StatelessIf", "Case", "StatelessCase", "_While", "_If",
})
# Op types whose work is matrix products (plain TensorFlow and oneDNN's rewritten names).
MATMUL_WORDS = ("MatMul", "Einsum", "Conv")


def profile_fit(model, ds, steps: int, logdir: str) -> str:
    """Runs ``steps`` steps of ``model.fit`` on ``ds`` under the profiler; returns
    the path of the trace (``.xplane.pb``) this run wrote under ``logdir``."""
    import tensorflow as tf

    before = set(_traces(logdir))
    tf.profiler.experimental.start(logdir)
    try:
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    finally:
        tf.profiler.experimental.stop()
    new = [p for p in _traces(logdir) if p not in before]
    if not new:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    return max(new, key=os.path.getmtime)


def _traces(logdir: str) -> List[str]:
    return glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))


def kernel_events(xplane_path: str) -> Iterator[Tuple[str, str, float]]:
    """(op name, op type, seconds) of every TensorFlow kernel run in the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            for ev in line.events:
                md = plane.event_metadata[ev.metadata_id]
                op_type = md.display_name
                if not op_type or not md.name.endswith(":" + op_type) or op_type in WRAPPERS:
                    continue
                yield md.name[:-len(op_type) - 1], op_type, ev.duration_ps * 1e-12


def is_matmul(op_type: str) -> bool:
    return any(w in op_type for w in MATMUL_WORDS)


#: The parts of a training step an op is charged to, by the first rule that matches
#: (matrix products by op type; the rest by the layer in the op's name).
PARTS = (("GELU", "/Gelu"), ("LayerNorm", "layer_norm"), ("softmax", "oftmax"),
         ("optimizer", "adamw/"), ("attention, other", "self_attention_layer"))


def part_of(name: str, op_type: str) -> str:
    """The part of the step (``PARTS``, ``"matrix products"``, ``"casts"`` or
    ``"other"``) an op named ``name`` of type ``op_type`` belongs to."""
    if is_matmul(op_type):
        return "matrix products"
    for part, word in PARTS:
        if word in name:
            return part
    return "casts" if op_type == "Cast" else "other"


def rank_ops(xplane_path: str, steps: int, top: int = 15) -> Dict[str, object]:
    """The trace's kernels grouped by op type, most time first.

    ``op_seconds_per_step``: all kernels' time per step; ``by_type``: the ``top``
    types with seconds per step, share of the ops' total, kernel runs per step
    and whether they are matrix products; ``matmul_share``: the share of all
    matrix-product kernels; ``backward_share``: of kernels under the gradient
    tape; ``top_names``: the ``top`` single ops (by name) with their shares;
    ``by_part``: the share of each part of the step (:func:`part_of`)."""
    seconds: Dict[str, float] = collections.defaultdict(float)
    counts: Dict[str, int] = collections.Counter()
    by_name: Dict[Tuple[str, str], float] = collections.defaultdict(float)
    parts: Dict[str, float] = collections.defaultdict(float)
    backward = 0.0
    for name, op_type, s in kernel_events(xplane_path):
        parts[part_of(name, op_type)] += s
        seconds[op_type] += s
        counts[op_type] += 1
        by_name[(name, op_type)] += s
        if "gradient_tape/" in name:
            backward += s
    total = sum(seconds.values())
    if not total:
        raise RuntimeError(f"no TensorFlow kernel events in {xplane_path}")
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])
    return {
        "trace": xplane_path,
        "steps": steps,
        "op_seconds_per_step": total / steps,
        "matmul_share": sum(s for t, s in seconds.items() if is_matmul(t)) / total,
        "backward_share": backward / total,
        "by_type": [{"op": t, "s_per_step": s / steps, "share": s / total,
                     "runs_per_step": counts[t] / steps, "matmul": is_matmul(t)}
                    for t, s in ranked[:top]],
        "top_names": [{"op": f"{n} ({t})", "share": s / total}
                      for (n, t), s in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]],
        "by_part": {p: s / total for p, s in sorted(parts.items(), key=lambda kv: -kv[1])},
    }


def format_ranking(prof: Dict[str, object]) -> str:
    """The ranking as the text table `clue bench train --profile` prints."""
    lines = [f"profile: {prof['steps']} steps, kernels {prof['op_seconds_per_step']:.4g} s/step "
             f"(summed over threads), matrix products {prof['matmul_share']:.1%}, "
             f"backward {prof['backward_share']:.1%}; trace {prof['trace']}",
             f"{'op type':<28} {'s/step':>10} {'share':>7} {'runs/step':>10}"]
    for row in prof["by_type"]:
        lines.append(f"{row['op']:<28} {row['s_per_step']:>10.4g} {row['share']:>7.1%} "
                     f"{row['runs_per_step']:>10.0f}")
    if prof.get("by_part"):
        lines.append("by part: " + ", ".join(f"{p} {share:.1%}"
                                             for p, share in prof["by_part"].items()))
    return "\n".join(lines)

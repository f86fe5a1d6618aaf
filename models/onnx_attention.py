"""Each attention of an exported encoder in one ONNX Runtime kernel, its flash-attention path included.

    fuse_attention(onnx_path, num_heads, feeds)   # in place; the number of attentions fused (0: file unchanged)

The exporter writes an encoder's attention as a dozen ops per layer (head reshapes and transposes, the scaled query
x key product, the padding mask added, softmax, the product with the values, the transpose back), each a pass over
the batch. ``fuse_attention`` puts each in one ``com.microsoft.MultiHeadAttention``, with the projections' biases
added inside it. ONNX Runtime's CPU kernel has a flash-attention path (the scores a block at a time, never the whole
batch x heads x tokens x tokens) but only without a padding mask; with one it computes the scores whole and is
slower than the flash path by ~2x. So the mask goes into the product itself: every query head gets one more channel,
1 / scale (a zero column of the query product's weights, with that bias: no op of its own), and every key head one
more (a concatenated column), 0 for a token and -``MASK_OFFSET`` for padding, which subtracts ``MASK_OFFSET`` from a
padded key's scaled score and nothing from a token's. exp(-60) is 1e-26 of a token's weight: nothing in float32, the
same vectors (to ~1e-6). Not more: a score past ~-87 after the softmax's shift is a subnormal float, and ONNX
Runtime's exp ran 2-9x slower on those (2026-12-06, this Xeon).

Measured on e5-small, 1,000 XQuAD-R texts, the 2-core Intel Xeon of the README, both versions in one process: int8
1.13x its texts/s unfused (1.47x -> 1.65x PyTorch), float32 1.08x (0.83x -> 0.90x); ONNX Runtime's own mask input
(``key_padding_mask``, the unfused path) gained about two thirds as much. The query's channel from its product
rather than a ``Pad`` per layer (EXPORT_VERSION 6): int8 1.02x, float32 1.04x more, in one run.

The rewrite matches the exporter's pattern (walking from each softmax back through reshapes, transposes and scalar
multiplications to the three projections) and is kept only when the fused graph gives the exported one's outputs on
``feeds`` (short texts padded beside a long one): an architecture whose attention adds more than the padding mask (a
position bias) or is written otherwise keeps its exported graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_OFFSET = 60.0  # subtracted from a padded key's scaled score (module docstring)
TOLERANCE = 1e-4  # largest difference to the exported graph's outputs on the check batch
LAYOUT_OPS = ("Reshape", "Transpose")
SMALL = 1 << 16  # elements: constants read as arrays (scalars, biases)


def fuse_attention(path: Path, num_heads: int, feeds: dict[str, np.ndarray]) -> int:
    """Rewrite the ONNX file at ``path`` (module docstring); the number of attentions fused, 0 when the pattern is
    not found or the fused graph's outputs on ``feeds`` differ (then the file is left as it was)."""
    import onnx

    model = onnx.load(str(path))
    try:
        fused = _fuse(model, num_heads)
    except Exception:  # noqa: BLE001 - a graph shaped otherwise (a bias the heads do not divide, ...): the export's own
        return 0
    if not fused:
        return 0
    candidate = path.with_name(f"{path.name}.fused.onnx")
    try:
        onnx.save(model, str(candidate))
        del model  # the weights: not held through the two sessions below
        if not _same_outputs(path, candidate, feeds):
            return 0
        candidate.replace(path)
        return fused
    finally:
        candidate.unlink(missing_ok=True)


def _fuse(model, num_heads: int) -> int:
    """Rewrite ``model`` in memory; the number of attentions fused (0: nothing changed that matters)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    if "attention_mask" not in {item.name for item in graph.input}:
        return 0
    made_by = {name: node for node in graph.node for name in node.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    weights = {tensor.name: tensor for tensor in graph.initializer}
    constants = {  # scales and biases; not the weight matrices (a copy of the model)
        tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer if np.prod(tensor.dims) <= SMALL
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def source(name: str) -> tuple[str, float]:
        """The tensor ``name`` is a head layout of, and the scalar factors on the way."""
        factor = 1.0
        while (node := made_by.get(name)) is not None:
            if node.op_type in LAYOUT_OPS:
                name = node.input[0]
            elif node.op_type == "Mul" and constants.get(node.input[1], np.empty(2)).size == 1:
                factor *= float(constants[node.input[1]].item())
                name = node.input[0]
            else:
                break
        return name, factor

    def only_user(name: str, op_type: str):
        found = users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def without_bias(name: str) -> tuple[str, np.ndarray | None]:
        node = made_by.get(name)
        if node is not None and node.op_type == "Add":
            for i in (0, 1):
                bias = constants.get(node.input[1 - i])
                if bias is not None and bias.ndim == 1:
                    return node.input[i], bias.astype(np.float32)
        return name, None

    replacements: dict[str, list] = {}  # the attention's output -> the nodes that make it now
    initializers = []
    for index, softmax in enumerate(node for node in graph.node if node.op_type == "Softmax"):
        scores = made_by.get(softmax.input[0])
        product = made_by.get(scores.input[0]) if scores is not None and scores.op_type == "Add" else None
        weighted = only_user(softmax.output[0], "MatMul")
        back = only_user(weighted.output[0], "Transpose") if weighted is not None else None
        merged = only_user(back.output[0], "Reshape") if back is not None else None
        if product is None or product.op_type != "MatMul" or merged is None or weighted.input[0] != softmax.output[0]:
            return 0
        (query, q_factor), (key, k_factor) = source(product.input[0]), source(product.input[1])
        value, v_factor = source(weighted.input[1])
        if v_factor != 1.0:
            return 0
        scale = q_factor * k_factor
        if scale == 0:
            return 0
        (query, q_bias), (key, k_bias), (value, v_bias) = (without_bias(name) for name in (query, key, value))
        projection = made_by.get(query)  # the query's product: its weights get the mask channels (zero columns)
        weight = weights.get(projection.input[1]) if projection is not None and projection.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or weight.dims[1] % num_heads:
            return 0
        width = weight.dims[1]
        q_weight = numpy_helper.to_array(weight).reshape(weight.dims[0], num_heads, -1)
        q_weight = np.concatenate([q_weight, np.zeros((weight.dims[0], num_heads, 1), q_weight.dtype)], axis=2)
        q_bias, k_bias, v_bias = (np.zeros(width, np.float32) if b is None else b for b in (q_bias, k_bias, v_bias))
        q_bias = np.concatenate([q_bias.reshape(num_heads, -1), np.full((num_heads, 1), 1 / scale)], axis=1)
        k_bias = np.concatenate([k_bias.reshape(num_heads, -1), np.zeros((num_heads, 1))], axis=1)
        name = f"fused_attention_{index}"
        initializers += [
            numpy_helper.from_array(q_weight.reshape(weight.dims[0], -1), f"{name}_query_weight"),
            numpy_helper.from_array(
                np.concatenate([q_bias.ravel(), k_bias.ravel(), v_bias]).astype(np.float32), f"{name}_bias"
            ),  # fmt: skip
        ]
        nodes = [
            helper.make_node("MatMul", [projection.input[0], f"{name}_query_weight"], [f"{name}_query"]),
            helper.make_node("Reshape", [key, "fused_heads_shape"], [f"{name}_key_heads"]),
            helper.make_node("Concat", [f"{name}_key_heads", "fused_mask_channel"], [f"{name}_key_masked"], axis=3),
            helper.make_node("Reshape", [f"{name}_key_masked", "fused_merged_shape"], [f"{name}_key"]),
        ]
        inputs = [f"{name}_query", f"{name}_key", value, f"{name}_bias"]
        nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                inputs,
                [merged.output[0]],
                name=name,
                domain="com.microsoft",
                num_heads=num_heads,
                scale=scale,
            )  # fmt: skip
        )
        replacements[merged.output[0]] = nodes
    if not replacements:
        return 0

    mask_nodes = [  # (batch, tokens, heads, 1): 0 for a token, -MASK_OFFSET for padding
        helper.make_node("Cast", ["attention_mask"], ["fused_mask_float"], to=1),  # FLOAT
        helper.make_node("Sub", ["fused_mask_float", "fused_one"], ["fused_mask_padding"]),  # 0 / -1
        helper.make_node("Mul", ["fused_mask_padding", "fused_mask_offset"], ["fused_mask_scores"]),
        helper.make_node("Unsqueeze", ["fused_mask_scores", "fused_last_axes"], ["fused_mask_column"]),
        helper.make_node("Shape", ["fused_mask_column"], ["fused_mask_column_shape"]),
        helper.make_node("Mul", ["fused_mask_column_shape", "fused_heads_repeat"], ["fused_mask_shape"]),
        helper.make_node("Expand", ["fused_mask_column", "fused_mask_shape"], ["fused_mask_channel"]),
    ]
    arrays = {
        "fused_one": np.array(1, np.float32),
        "fused_mask_offset": np.array(MASK_OFFSET, np.float32),
        "fused_last_axes": np.array([2, 3], np.int64),
        "fused_heads_repeat": np.array([1, 1, num_heads, 1], np.int64),
        "fused_heads_shape": np.array([0, 0, num_heads, -1], np.int64),
        "fused_merged_shape": np.array([0, 0, -1], np.int64),
    }
    initializers += [numpy_helper.from_array(array, name) for name, array in arrays.items()]

    nodes = list(mask_nodes)
    for node in graph.node:
        nodes.extend(replacements.get(node.output[0], [node]) if node.output else [node])
    needed = {item.name for item in graph.output}
    live = []
    for node in reversed(nodes):  # only what the outputs need: the unfused attentions' ops go
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(live))
    graph.initializer.extend(initializers)
    kept = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    made = {name for node in graph.node for name in node.output}
    shapes = [info for info in graph.value_info if info.name in made]  # not those of the ops removed
    del graph.value_info[:]
    graph.value_info.extend(shapes)
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replacements)


def graph_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of the ONNX file at ``path`` on ``feeds`` (those of its inputs), on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {item.name: feeds[item.name] for item in session.get_inputs()})


def _same_outputs(exported: Path, fused: Path, feeds: dict[str, np.ndarray]) -> bool:
    """Whether the two files give the same outputs (to ``TOLERANCE``) on ``feeds``; a fused graph ONNX Runtime
    cannot run gives none."""
    try:
        candidate = graph_outputs(fused, feeds)
    except Exception:  # noqa: BLE001 - an op or attribute this ONNX Runtime does not take: keep the export
        return False
    return all(
        a.shape == b.shape and float(np.abs(a - b).max()) <= TOLERANCE
        for a, b in zip(graph_outputs(exported, feeds), candidate, strict=True)
    )

"""The FP32 region of a weakly typed FP16 TensorRT network (TensorRT 8.5/8.6), by dataflow.

The region is :func:`clit.runtime.fp32_region.fp32_region` evaluated on the network the ONNX
parser built, layer by layer, so no layer is missed because of its name: the parser gives an
ONNX node's name to the first TensorRT layer only (later ones get ``<name>_<N>`` with a
context-wide counter), leaves its 8.x broadcast/cast helper layers unnamed, and names
constant layers after the initializer (onnx-tensorrt 8.5-GA ``ImporterContext.cpp``
``registerLayer``, ``onnx2trt_utils.cpp`` ``broadcastTensor``/``castHelper``/``convertToTensor``).

Pinned: every layer of the region that computes a float tensor (``layer.precision`` and the
float outputs' types set to FP32), the float constant layers read by them (the encoding's
frequencies and projections), and the casts that turn coordinate-path floats into indices
(precision FP32, integer outputs untouched: FP16 holds integers exactly only up to 2048).
Never pinned: the other integer, bool and shape layers, which would fail the build under
``OBEY_PRECISION_CONSTRAINTS`` ("For a IIdentityLayer: If it casts to/from float/half/int8/
uint8, the precision must be one of those types, otherwise it must be either the input or
output type", NvInfer.h ``ILayer::setPrecision``, 8.5-10.x; trtexec skips such layers too,
samples/common/sampleEngines.cpp ``setLayerPrecisions``).

TensorRT 10+ builds FP16 as a strongly typed network from the mixed-precision ONNX variant
instead (no pinning); 11 has no weak typing at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fp32_region import CAST, CONSTANT, OTHER, SHAPE, SOFTMAX, Op, Region, fp32_region

_KINDS = {"CONSTANT": CONSTANT, "SHAPE": SHAPE, "SOFTMAX": SOFTMAX, "CAST": CAST, "IDENTITY": CAST}


def _float_types(trt) -> tuple:
    return tuple(getattr(trt.DataType, n) for n in ("FLOAT", "HALF", "BF16") if hasattr(trt.DataType, n))


def network_ops(trt, network) -> tuple:
    """(ops, input names) of a TensorRT network, in layer order (topological for parsed
    networks).  Op names are ``<index>:<layer name>`` (layer names need not be unique: the
    parser names Q/DQ layers after their node without making them unique).  Optional inputs
    that are absent (``get_input`` returns None) are skipped."""
    floats = _float_types(trt)
    ops = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        ins = [t for t in ins if t is not None]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        kind = _KINDS.get(getattr(layer.type, "name", str(layer.type)).split(".")[-1], OTHER)
        ops.append(Op(f"{i}:{layer.name}", kind, tuple(t.name for t in ins), tuple(t.name for t in outs),
                      tuple(t.dtype in floats for t in outs), tuple(t.dtype in floats for t in ins)))
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    return ops, inputs


@dataclass(frozen=True)
class Pinning:
    region: Region
    layers: tuple  # op names (``<index>:<layer name>``) pinned to FP32, in network order
    casts: tuple  # of those, the float -> integer casts (precision pinned, output type left alone)

    @property
    def indices(self) -> set:
        return {int(name.split(":", 1)[0]) for name in self.layers}


def select_fp32_layers(ops, inputs) -> Pinning:
    """The layers to pin: the region's float layers, the float constants they read, and the
    casts that turn their floats into indices."""
    region = fp32_region(ops, inputs)
    keep = region.ops | region.constants | region.casts
    return Pinning(region, tuple(op.name for op in ops if op.name in keep),
                   tuple(op.name for op in ops if op.name in region.casts))


def pin_fp32(trt, network) -> Pinning:
    """Pin the FP32 region of ``network`` (see module docstring) and return what was pinned:
    precision FP32 on every chosen layer, FP32 output types on their float outputs only (the
    casts' integer outputs keep their type: "For a IIdentityLayer: If it casts to/from
    float/half/int8/uint8, the precision must be one of those types")."""
    ops, inputs = network_ops(trt, network)
    pinning = select_fp32_layers(ops, inputs)
    floats = _float_types(trt)
    for i in sorted(pinning.indices):
        layer = network.get_layer(i)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
    return pinning

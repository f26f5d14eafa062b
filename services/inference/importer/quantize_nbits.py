"""The conversion venv's half of a weight-only variant: an fp32 ONNX graph -> MatMulNBits with 4 (or 8) bits.

Run by path inside the conversion venv (onnxruntime's quantizer needs onnx_ir, which only that venv has), never
imported by the service:

    <venv>/bin/python quantize_nbits.py SRC_MODEL_ONNX OUT_MODEL_ONNX BITS BLOCK_SIZE

Every MatMul with a constant weight (the attention and MLP projections and lm_head) becomes a MatMulNBits node
with symmetric blocks of BLOCK_SIZE weights along K and one fp32 scale each: with 4 bits and blocks of 32 that is
llama.cpp's Q4_0 layout. accuracy_level 4 lets the CPU kernel compute with int8 activations, as the builder's int8
artifact does. It prints one line `LLMLAB_RESULT {json}` with the counts and versions for the manifest.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

RESULT_PREFIX = "LLMLAB_RESULT "


def quantize(src: pathlib.Path, out: pathlib.Path, bits: int, block_size: int) -> dict[str, object]:
    import onnx  # only the conversion venv has onnx_ir, which the quantizer imports
    import onnxruntime
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    t = time.monotonic()
    model = onnx.load(str(src))  # with its external data
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=4, op_types_to_quantize=("MatMul",), bits=bits
    )
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4, algo_config=config
    )
    quantizer.process()
    quantized = quantizer.model.model
    after = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
    if after == 0:
        raise SystemExit(f"no MatMul of {src} was quantised; the graph is not the builder's fp32 decoder")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        quantized, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
        location=out.name + ".data", size_threshold=1024,
    )  # fmt: skip
    return {
        "matmuls": before,
        "quantized": after,
        "bits": bits,
        "block_size": block_size,
        "seconds": round(time.monotonic() - t, 1),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
    }


def main(argv: list[str]) -> int:
    src, out, bits, block = pathlib.Path(argv[0]), pathlib.Path(argv[1]), int(argv[2]), int(argv[3])
    result = quantize(src, out, bits, block)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

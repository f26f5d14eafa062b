"""The conversion venv's half of the import: GGUF dequantised to fp32 -> Hugging Face folder.

Run by path inside the conversion venv (torch, transformers), never imported by the service:

    <venv>/bin/python gguf_to_hf.py GGUF OUT_DIR

It prints one line `LLMLAB_RESULT {json}` with what the manifest needs about the checkpoint.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any

RESULT_PREFIX = "LLMLAB_RESULT "


def gguf_to_hf(gguf: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    """Runs inside the conversion venv: GGUF dequantised to fp32 -> HF folder (weights, tokenizer, template)."""
    import torch  # only the conversion venv has torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.monotonic()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    print(f"loaded in {time.monotonic() - t:.1f} s: {model.config.architectures}", flush=True)
    # The loaded model still carries the GGUF quantizer; saving with it writes a config the builder rejects.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if tok.chat_template and not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(tok.chat_template)
    cfg = model.config
    return {
        "parameter_count": sum(p.numel() for p in model.parameters()),
        "architecture": cfg.architectures[0],
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }



if __name__ == "__main__":
    info = gguf_to_hf(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
    print(RESULT_PREFIX + json.dumps(info), flush=True)

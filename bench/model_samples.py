"""Unedited completions of the default model, for docs/MODEL.md.

Each prompt is continued in parametric mode (the LM alone) and in kNN-LM mode over the
default datastore that `silo serve` builds (FOLDOC entries, tuned on held-out FOLDOC),
with the settings printed above the table. A prompt starts a document (end-of-text
first), as in training and in `silo complete`.

    python bench/model_samples.py --out docs/model_samples.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from silo.cli.serve_cmd import default_datastore, default_reference
from silo.lm import GenerationRequest, SiloLM, SiloOptions
from silo.model import DEFAULT_MODEL

PROMPTS = (
    "A kernel is",
    "The Lord said unto Moses,",
    "In computing, a compiler is",
    "The function returns",
    "A dog is a",
    "FORTRAN was",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/model_samples.md"))
    args = ap.parse_args()
    store = default_datastore(args.model)
    lm = SiloLM.from_dirs(args.model, store, reference_dir=default_reference(args.model))
    lines = [
        f"# Completions of `{args.model.name}`, unedited",
        "",
        f"Model `{args.model.name}`; `max_tokens` {args.max_tokens}, `temperature` "
        f"{args.temperature:g}, `top_p` {args.top_p:g}, `seed` {args.seed}; greedy rows "
        "use temperature 0. kNN-LM rows use the default datastore of `silo serve` "
        f"(`{store.name}`) at its tuned k, lambda and tau. Produced by "
        "`python bench/model_samples.py`; the text is as generated, ending at "
        "`max_tokens` or at the end-of-text token.",
    ]
    for prompt in PROMPTS:
        lines += ["", f"### {prompt!r}"]
        ids = (lm.eos_id, *lm.encode(prompt))
        for label, mode, temperature in (("parametric, sampled", "parametric", None),
                                         ("parametric, greedy", "parametric", 0.0),
                                         ("kNN-LM, sampled", "knnlm", None)):
            t = args.temperature if temperature is None else temperature
            res = lm.generate(GenerationRequest(ids, args.max_tokens, t, args.top_p,
                                                seed=args.seed, options=SiloOptions(mode)))
            text = prompt + res.choices[0].text
            lines += ["", f"{label}:", "", "```text", *text.splitlines(), "```"]
            print(label, repr(text), flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

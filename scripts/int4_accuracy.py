"""What each INT4 weight format costs in quality, on a real model: SmolLM2-135M-Instruct.

Random-weight benchmark models say nothing about quality, so this takes the one real model at hand (the GGUF of
``make real-model``, dequantized to fp32 by transformers), exports it to OpenVINO in each format, and measures
perplexity on a fixed English text (this README's first 1024 tokens) and greedy answers to five factual questions,
against the fp32 model in PyTorch. A 135M model is far more sensitive to quantization than a 1.5B one: read the
differences between formats, not the absolute numbers, as what carries over.

    python scripts/int4_accuracy.py --out bench-results/int4-accuracy
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402

QUESTIONS = ["What is the capital of France?", "What is the largest planet in the solar system?",
             "How many days are in a week?", "What gas do plants absorb from the air?", "Who wrote Romeo and Juliet?"]
EXPECTED = ["Paris", "Jupiter", "7", "carbon dioxide", "Shakespeare"]
FORMATS: dict[str, dict[str, Any]] = {
    "INT8 (per channel)": {"bits": 8, "sym": False},
    "INT4 asym g64": {"bits": 4, "sym": False, "group_size": 64, "ratio": 1.0},
    "INT4 sym g64": {"bits": 4, "sym": True, "group_size": 64, "ratio": 1.0},
    "INT4 asym g64, all layers": {"bits": 4, "sym": False, "group_size": 64, "ratio": 1.0, "all_layers": True},
    "INT4 sym g64, all layers": {"bits": 4, "sym": True, "group_size": 64, "ratio": 1.0, "all_layers": True},
    "INT4 sym channel-wise": {"bits": 4, "sym": True, "group_size": -1, "ratio": 1.0},
    "INT4 sym channel-wise, all layers": {"bits": 4, "sym": True, "group_size": -1, "ratio": 1.0, "all_layers": True},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=str(REPO / "models" / "real" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--work", default=str(REPO / "models" / "bench" / "accuracy"))
    parser.add_argument("--out", default=str(REPO / "bench-results" / "int4-accuracy"))
    args = parser.parse_args()
    import openvino_genai as ov_genai
    import torch
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    from transformers import AutoModelForCausalLM

    gguf, work = Path(args.gguf), Path(args.work)
    src = work / "src"
    if not (src / "config.json").exists():  # needs accelerate (transformers' GGUF loader)
        AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                             dtype=torch.float32).save_pretrained(src)
    tokenizer = ov_genai.Tokenizer(str(gguf))  # transformers' conversion of this file's tokenizer is wrong

    def encode(text: str) -> Any:
        return torch.tensor(tokenizer.encode(text, add_special_tokens=False).input_ids.data[:, :1024],
                            dtype=torch.long)

    text_ids = encode((REPO / "README.md").read_text(encoding="utf-8")[:6000])

    def evaluate(model: Any) -> dict[str, Any]:
        with torch.no_grad():
            logits = model(input_ids=text_ids, attention_mask=torch.ones_like(text_ids)).logits.float()
        ppl = math.exp(float(torch.nn.functional.cross_entropy(logits[0, :-1], text_ids[0, 1:])))
        answers = []
        for question in QUESTIONS:
            prompt = encode(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                          add_generation_prompt=True))
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                                 eos_token_id=tokenizer.get_eos_token_id(), pad_token_id=tokenizer.get_eos_token_id())
            answers.append(tokenizer.decode([int(t) for t in out[0, prompt.shape[1]:]]).strip().split("\n")[0])
        right = sum(e.lower() in a.lower() for e, a in zip(EXPECTED, answers, strict=True))
        return {"ppl": ppl, "right": right, "answers": answers}

    results = {"fp32 (PyTorch)": evaluate(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32))}
    for name, options in FORMATS.items():
        dst = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        if not (dst / "openvino_model.xml").exists():
            model = OVModelForCausalLM.from_pretrained(str(src), export=True, compile=False,
                                                       quantization_config=OVWeightQuantizationConfig(**options))
            model.save_pretrained(dst)
            del model
            gc.collect()
        results[name] = evaluate(OVModelForCausalLM.from_pretrained(str(dst), device="CPU"))
        print(name, round(results[name]["ppl"], 2), results[name]["right"], flush=True)  # noqa: T201
    result = {"when": timestamp(), "machine": machine(), "model": gguf.name, "results": results}
    write_outputs(result, Path(args.out), markdown(result))
    print(markdown(result))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    base = r["results"]["fp32 (PyTorch)"]["ppl"]
    rows = [[name, round(v["ppl"], 1), f"{v['ppl'] / base - 1:+.0%}", f"{v['right']}/5"]
            for name, v in r["results"].items()]
    return (f"# INT4 formats and quality ({r['when']})\n\n{machine_line(r['machine'])}; {r['model']} exported "
            "in each format; perplexity on README.md's first 1024 tokens; five factual questions, greedy.\n\n"
            + table(["format", "perplexity", "vs fp32", "right answers"], rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""What text mode costs per new prompt on this CPU, for every text-encoder family ComfyUI ships.

Each family's text encoder is ComfyUI's own (tests/family_clips.py: the classes and tokenizers its loader
uses, full width, random fp16 weights as ComfyUI keeps text encoders on a CPU). The released models do
not fit beside anything else in this machine's memory (Qwen2.5-VL 7B, Llama 3.1 8B, T5-XXL), so each
layered encoder is built with a few layers and every layer's forward is timed inside the CLIPTextEncode
call that runs it (forward hooks), so the layers and the rest of the call are measured together:
    per prompt = the call + sum over encoders of (its mean layer time) x (the layers cut)
The reference, in the same run and interleaved with every family's prompts (prompt i of SDXL, then
prompt i of the family): SDXL's text encoder (CLIP-L + CLIP-G) at full depth, which needs no
extrapolation. Each figure is the median over --prompts distinct prompts; the ratio is the median of
the per-prompt ratios, so a machine whose speed drifts during the run still gives a fair ratio.

    PYTHONPATH=../shared/comfyui-tools .venv/bin/python bench/bench_text_families.py [--families sd3 wan] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from family_clips import FAMILIES, family_clip, randomise  # noqa: E402
from helpers import COMFYUI  # noqa: E402

PROMPT = "close-up of an amber iris with gold flecks and a dark limbal ring, macro photograph, sharp focus, detailed {}"
BUILT = 1  # layers built beyond each encoder's fewest, so its layer list is unambiguous and timed more than once


def import_comfy() -> Any:
    sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import nodes

    return nodes


def layer_list(module: torch.nn.Module, depth: int) -> torch.nn.ModuleList:
    """The encoder's stack of `depth` transformer layers: the ModuleList of that length holding most parameters."""
    lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if not lists:
        raise LookupError(f"no list of {depth} layers in {type(module).__name__}")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


class LayerTimer:
    """Wall time spent inside each listed layer's forward, summed per encoder, for the current call."""

    def __init__(self, stacks: dict[str, torch.nn.ModuleList]) -> None:
        self.seconds = dict.fromkeys(stacks, 0.0)
        self.calls = dict.fromkeys(stacks, 0)
        self._start: dict[int, float] = {}
        for name, stack in stacks.items():
            for layer in stack:
                layer.register_forward_pre_hook(self._pre)
                layer.register_forward_hook(self._post(name))

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        self._start[id(module)] = time.perf_counter()

    def _post(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
            self.seconds[name] += time.perf_counter() - self._start.pop(id(module))
            self.calls[name] += 1

        return hook

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)


def encode_seconds(clip: Any, nodes: Any, prompt: str) -> tuple[float, Any]:
    t = time.perf_counter()
    out = nodes.CLIPTextEncode().encode(clip, prompt)[0]
    return time.perf_counter() - t, out


def sdxl_clip() -> Any:
    import comfy.sd
    import comfy.sdxl_clip

    class Target:
        params: dict = {}
        clip = comfy.sdxl_clip.SDXLClipModel
        tokenizer = comfy.sdxl_clip.SDXLTokenizer

    clip = comfy.sd.CLIP(Target())
    randomise(clip.cond_stage_model)
    return clip


def params_of(module: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if "visual." not in n)


def measure(name: str, nodes: Any, reference: Any, prompts: int, tmp: Path) -> dict[str, Any]:
    spec = FAMILIES[name]
    built = {e.model: e.test + BUILT for e in spec.encoders}
    with family_clip(name, tmp, layers=built) as clip:
        model = clip.cond_stage_model
        stacks = {e.model: layer_list(getattr(model, e.attribute), built[e.model]) for e in spec.encoders}
        layer_params = {e.model: sum(p.numel() for p in stacks[e.model][0].parameters()) for e in spec.encoders}
        params = params_of(model) + sum(layer_params[e.model] * (e.real - built[e.model]) for e in spec.encoders)
        timer = LayerTimer(stacks)
        _, first = encode_seconds(clip, nodes, PROMPT.format("warm-up"))
        rows = []
        for i in range(prompts):
            ref, _ = encode_seconds(reference, nodes, PROMPT.format(f"variant {i}"))
            timer.reset()
            call, _ = encode_seconds(clip, nodes, PROMPT.format(f"variant {i}"))
            per_layer = {e.model: timer.seconds[e.model] / max(1, timer.calls[e.model]) for e in spec.encoders}
            real = call + sum(per_layer[e.model] * (e.real - built[e.model]) for e in spec.encoders if timer.calls[e.model])
            rows.append({"reference": ref, "call": call, "real": real, "ratio": real / ref, "per_layer": per_layer,
                         "ran": {e.model: timer.calls[e.model] > 0 for e in spec.encoders}})
    tokens, pooled = first[0][0], first[0][1].get("pooled_output")
    med = statistics.median
    return {
        "family": name, "loader": spec.loader, "type": spec.clip_type, "params": params,
        "seconds": med(r["real"] for r in rows), "ratio": med(r["ratio"] for r in rows),
        "reference_seconds": med(r["reference"] for r in rows), "call_seconds": med(r["call"] for r in rows),
        "tokens": int(tokens.shape[1]), "baked_bytes": tokens.numel() * 2 + (pooled.numel() * 2 if pooled is not None else 0),
        "encoders": {e.model or e.attribute: {"layers": [built[e.model], e.real], "params_per_layer": layer_params[e.model],
                                             "seconds_per_layer": med(r["per_layer"][e.model] for r in rows),
                                             "runs_for_this_prompt": rows[0]["ran"][e.model]} for e in spec.encoders},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), help=f"of {', '.join(FAMILIES)}")
    ap.add_argument("--prompts", type=int, default=5, help="distinct prompts timed per family (median)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    nodes = import_comfy()
    reference = sdxl_clip()
    print(f"reference: SDXL CLIP-L + CLIP-G at full depth ({params_of(reference.cond_stage_model) / 1e6:.0f}M parameters), "
          f"timed before each family prompt; {torch.get_num_threads()} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families:
            r = measure(name, nodes, reference, args.prompts, Path(tmp))
            rows.append(r)
            layers = ", ".join(f"{k} {v['seconds_per_layer']:.3f} s x {v['layers'][1]}"
                               + ("" if v["runs_for_this_prompt"] else " (not run for this prompt)")
                               for k, v in r["encoders"].items())
            print(f"{name:14s} {r['loader']}/{r['type']}: {r['seconds']:6.2f} s per prompt = {r['ratio']:5.1f}x SDXL "
                  f"({r['reference_seconds']:.2f} s) | {r['params'] / 1e9:.2f}B parameters | per layer: {layers} | "
                  f"the built call {r['call_seconds']:.2f} s | {r['tokens']} tokens, baked {r['baked_bytes'] / 1e6:.2f} MB",
                  flush=True)
            gc.collect()
    if args.json:
        args.json.write_text(json.dumps({"families": rows}, indent=1))


if __name__ == "__main__":
    main()

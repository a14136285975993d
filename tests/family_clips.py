"""ComfyUI's own text encoders of every model family, full width, random weights, fewer layers.

Each family's CLIP is built the way comfy/sd.py's load_text_encoder_state_dicts builds it for that
loader type (the same clip class factory and tokenizer), with ComfyUI's own config override
(`model_options["<model>_model_config"]`, read by comfy/sd1_clip.py) cutting each large encoder to a
few layers. Widths, vocabularies, tokenizers, templates, attention masks and extra outputs are the
real ones; weights are random and in the dtype ComfyUI picks (fp16 text encoders on the CPU).

Tokenizers the snapshot does not ship are made here, small, in a temp folder (nothing is written
into ../shared): the SentencePiece models of Gemma 2 (Lumina 2) and umT5 (Wan), which real
checkpoints carry inside the file, and Llama 3's tokenizer.json (HiDream), which the snapshot lacks:
a byte-level BPE over a few hundred merges, with Llama 3's special tokens at their real ids
(<|begin_of_text|> = 128000 ...), taken from the snapshot's tokenizer_config.json.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from helpers import COMFYUI

WORDS = ("eye iris amber gold green blue ring silver metal fabric sleeve macro photograph sharp focus close-up "
         "detailed pattern flecks glossy red brown skin lashes light shadow the a of with and an in on very dark "
         "limbal extreme tag reading").split()


@dataclass(frozen=True)
class Encoder:
    """One layered encoder inside a family's CLIP: ComfyUI's model name, its config's depth key, real depth."""

    model: str  # the "<model>_model_config" name ComfyUI reads (t5xxl, clip_g, qwen25_7b, llama, ...; "" for
    #             an encoder ComfyUI builds without a model name: HunyuanImage's ByT5)
    depth_key: str  # num_layers (T5) or num_hidden_layers (CLIP, Llama, Qwen, Gemma)
    real: int  # layers in the released model
    test: int  # layers built here (the fewest ComfyUI's layer choice allows)
    child: str = ""  # its attribute in the CLIP's text model, when not `model`

    @property
    def attribute(self) -> str:
        return self.child or self.model


@dataclass(frozen=True)
class FamilySpec:
    """A text-encoder family as a user loads it: the ComfyUI loader and type, and how it is built here."""

    name: str
    loader: str  # the ComfyUI node a user loads it with
    clip_type: str  # that loader's `type` value
    files: tuple[str, ...]  # the text encoder files that loader takes (released names)
    encoders: tuple[Encoder, ...]
    target: Callable[[], tuple[Any, Any]] = field(compare=False)  # () -> (clip class, tokenizer class)
    spiece: str | None = None  # which SentencePiece model the tokenizer needs: "gemma" / "umt5"


def _sd3() -> tuple[Any, Any]:
    import comfy.text_encoders.sd3_clip as m

    return m.sd3_clip(clip_l=True, clip_g=True, t5=True), m.SD3Tokenizer


def _qwen_image() -> tuple[Any, Any]:
    import comfy.text_encoders.qwen_image as m

    return m.te(), m.QwenImageTokenizer


def _hidream() -> tuple[Any, Any]:
    import comfy.text_encoders.hidream as m

    return m.hidream_clip(), m.HiDreamTokenizer


def _lumina2() -> tuple[Any, Any]:
    import comfy.text_encoders.lumina2 as m

    return m.te(), m.LuminaTokenizer


def _chroma() -> tuple[Any, Any]:
    import comfy.text_encoders.pixart_t5 as m

    return m.pixart_te(), m.PixArtTokenizer


def _wan() -> tuple[Any, Any]:
    import comfy.text_encoders.wan as m

    return m.te(), m.WanT5Tokenizer


def _hunyuan_image() -> tuple[Any, Any]:
    import comfy.text_encoders.hunyuan_image as m

    return m.te(byt5=True), m.HunyuanImageTokenizer


def _flux() -> tuple[Any, Any]:
    import comfy.text_encoders.flux as m

    return m.flux_clip(), m.FluxTokenizer


T5 = Encoder("t5xxl", "num_layers", 24, 1)
CLIP_L = Encoder("clip_l", "num_hidden_layers", 12, 3)  # SD3 takes its penultimate layer: needs 3
CLIP_G = Encoder("clip_g", "num_hidden_layers", 32, 3)
FAMILIES: dict[str, FamilySpec] = {f.name: f for f in (
    FamilySpec("sd3", "TripleCLIPLoader", "sd3", ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"),
               (CLIP_L, CLIP_G, T5), _sd3),
    FamilySpec("qwen_image", "CLIPLoader", "qwen_image", ("qwen_2.5_vl_7b_fp8_scaled.safetensors",),
               (Encoder("qwen25_7b", "num_hidden_layers", 28, 1),), _qwen_image),
    FamilySpec("hidream", "QuadrupleCLIPLoader", "hidream",
               ("clip_l_hidream.safetensors", "clip_g_hidream.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors",
                "llama_3.1_8b_instruct_fp8_scaled.safetensors"),
               (CLIP_L, CLIP_G, T5, Encoder("llama", "num_hidden_layers", 32, 1)), _hidream),
    FamilySpec("lumina2", "CLIPLoader", "lumina2", ("gemma_2_2b_fp16.safetensors",),
               (Encoder("gemma2_2b", "num_hidden_layers", 26, 3),), _lumina2, spiece="gemma"),  # hidden layer -2
    FamilySpec("chroma", "CLIPLoader", "chroma", ("t5xxl_fp16.safetensors",), (T5,), _chroma),
    FamilySpec("wan", "CLIPLoader", "wan", ("umt5_xxl_fp8_e4m3fn_scaled.safetensors",),
               (Encoder("umt5xxl", "num_layers", 24, 1),), _wan, spiece="umt5"),
    FamilySpec("hunyuan_image", "DualCLIPLoader", "hunyuan_image",  # Qwen's layer -3: needs 4
               ("qwen_2.5_vl_7b.safetensors", "byt5_small_glyphxl_fp16.safetensors"),
               (Encoder("qwen25_7b", "num_hidden_layers", 28, 4), Encoder("", "num_layers", 12, 1, "byt5_small")),
               _hunyuan_image),
    FamilySpec("flux", "DualCLIPLoader", "flux", ("clip_l.safetensors", "t5xxl_fp16.safetensors"), (CLIP_L, T5), _flux),
)}


def sentencepiece_model(kind: str) -> bytes:
    """A small SentencePiece model with the special-token ids of Gemma 2 (pad 0, eos 1, bos 2, unk 3) or
    umT5 (pad 0, eos 1, unk 2, no bos): whole pieces for the words the tests use (about as many tokens per word as the
    real ones), byte fallback for anything else, so every prompt tokenizes."""
    import sentencepiece

    ids = {"gemma": {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3},
           "umt5": {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1}}[kind]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=1000,
                                             model_type="unigram", hard_vocab_limit=False, byte_fallback=True,
                                             minloglevel=2, **ids)
    return out.getvalue()


def write_llama_tokenizer(folder: Path) -> Path:
    """Llama 3's tokenizer folder with a small tokenizer.json (byte-level BPE, Llama 3's special tokens at their
    real ids, <|begin_of_text|> prepended), beside the snapshot's own tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    src = COMFYUI / "comfy" / "text_encoders" / "llama_tokenizer" / "tokenizer_config.json"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, folder / "tokenizer_config.json")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    d = json.loads(tok.to_str())
    special = json.loads(src.read_text())["added_tokens_decoder"]
    d["added_tokens"] = [{"id": int(i), "content": v["content"], "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for i, v in special.items()]
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    d["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                                   "tokens": ["<|begin_of_text|>"]}}}
    (folder / "tokenizer.json").write_text(json.dumps(d))
    return folder


@contextlib.contextmanager
def llama_tokenizer_at(folder: Path) -> Iterator[None]:
    """Make ComfyUI's LLAMA3Tokenizer read the tokenizer in `folder` (for this block only)."""
    import comfy.sd1_clip
    import comfy.text_encoders.hunyuan_video as hv
    from transformers import LlamaTokenizerFast

    original = hv.LLAMA3Tokenizer

    class LocalLlama3Tokenizer(original):  # type: ignore[misc, valid-type]
        def __init__(self, embedding_directory: Any = None, tokenizer_data: dict = {}, min_length: int = 256,  # noqa: B006
                     pad_token: int = 128258) -> None:
            comfy.sd1_clip.SDTokenizer.__init__(
                self, str(folder), embedding_directory=embedding_directory, pad_with_end=False, embedding_size=4096,
                embedding_key="llama", tokenizer_class=LlamaTokenizerFast,
                has_start_token=True, has_end_token=False, pad_to_max_length=False, max_length=99999999,
                pad_token=pad_token, min_length=min_length, tokenizer_data=tokenizer_data)

    hv.LLAMA3Tokenizer = LocalLlama3Tokenizer
    try:
        yield
    finally:
        hv.LLAMA3Tokenizer = original


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.02, skip: tuple[str, ...] = ("visual.",)) -> None:
    """Fill every parameter in place with random values (norm weights 1): windows of one Gaussian pool, as
    ../shared/comfyui-tools/make_clip_vision.build_sd does, 20x faster than drawing each value. Parameters
    under `skip` (Qwen2.5-VL's vision tower, unused for text) stay as allocated and untouched."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 22, generator=g) * std
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(s in name for s in skip):
                continue
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
                continue
            flat = p.view(p.shape[0], -1) if p.ndim > 1 else p.view(1, -1)
            rows, cols = flat.shape
            src = pool.to(p.dtype)
            step = max(1, (src.numel() - cols) // max(1, rows - 1)) if rows > 1 else 1
            span = (rows - 1) * step + cols
            off = int(torch.randint(0, max(1, src.numel() - span + 1), (1,), generator=g))
            flat.copy_(src.as_strided((rows, cols), (step, 1), off))


def build_clip(name: str, tmp: Path, layers: dict[str, int] | None = None, seed: int = 0) -> Any:
    """Family `name`'s CLIP (comfy.sd.CLIP) with ComfyUI's classes: full width, random weights, each layered
    encoder at its test depth (or `layers[model]`). HiDream needs `llama_tokenizer_at` around this call."""
    import comfy.sd

    spec = FAMILIES[name]
    clip_class, tokenizer_class = spec.target()
    options = {f"{e.model}_model_config": {e.depth_key: (layers or {}).get(e.model, e.test)} for e in spec.encoders}
    tokenizer_data = {"spiece_model": sentencepiece_model(spec.spiece)} if spec.spiece else {}

    class Target:
        params: dict = {}
        clip = clip_class
        tokenizer = tokenizer_class

    clip = comfy.sd.CLIP(Target(), tokenizer_data=tokenizer_data, model_options=options)
    randomise(clip.cond_stage_model, seed)
    return clip


@contextlib.contextmanager
def family_clip(name: str, tmp: Path, layers: dict[str, int] | None = None, seed: int = 0) -> Iterator[Any]:
    """build_clip inside the tokenizer set-up it needs; frees the model afterwards (one family at a time)."""
    with contextlib.ExitStack() as stack:
        if name == "hidream":
            stack.enter_context(llama_tokenizer_at(write_llama_tokenizer(tmp / "llama_tokenizer")))
        clip = build_clip(name, tmp, layers, seed)
        try:
            yield clip
        finally:
            del clip
            gc.collect()

"""`gpt2cy convert MODEL -o FILE.gguf --dtype TYPE`: write a model as a GGUF v3 file (gpt2cy.loading.export_gguf)
that llama.cpp, ollama and gpt2cy itself run."""
from __future__ import annotations

import sys
import time

NAME = "convert"
HELP = "write a model as a GGUF file (f32, bf16, q8_0, q4_0) for llama.cpp, ollama and gpt2cy"
DESCRIPTION = ("Write MODEL (a name, a model directory or a GGUF file) as a GGUF v3 file with GPT-2's "
               "architecture and tokenizer metadata, as llama.cpp's convert_hf_to_gguf.py writes them. "
               "--dtype picks the weight type (default: f32; a GGUF file keeps its own); q8_0 and q4_0 are "
               "ggml's blocks, quantized as gguf-py and llama.cpp quantize them.")


def add_arguments(p) -> None:
    p.add_argument("source", nargs="?", metavar="MODEL", help="the model to convert (default: -m, else 124M)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    p.add_argument("--name", metavar="TEXT", help="general.name in the file (default: the model's name)")


def run(args) -> int:
    from ..loading import export_gguf
    from ..hub.progress import format_bytes
    from ..notices import notice
    from .commands import EXIT_OK
    from .parser import DEFAULT_MODEL, UsageError
    if args.source and args.model and args.source != args.model:
        raise UsageError(f"gpt2cy convert: two models given ({args.source} and -m {args.model}); give one "
                         f"(see gpt2cy convert --help)")
    source = args.source or args.model or DEFAULT_MODEL
    t0 = time.perf_counter()
    result = export_gguf(source, args.output, dtype=args.dtype, threads=args.threads,
                         offline=True if args.offline else None, name=args.name)
    notice(f"wrote {result['path']}: GPT-2 as {result['dtype']}, {result['tensors']} tensors, "
           f"{format_bytes(result['bytes'])}, in {time.perf_counter() - t0:.1f} s")
    sys.stderr.flush()
    return EXIT_OK

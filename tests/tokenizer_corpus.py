"""Text the tokenizer tests and benchmarks share: hand-picked hard cases and a deterministic mixed corpus.

Everything is built from this file and Python's own standard library, so no data files are needed.
"""
import os
import sysconfig

# One entry per kind of text the brief names; each must match tiktoken and HF tokenizers exactly.
SAMPLES = {
    "anchor": "Hello world",
    "prose": ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
              "foolishness... \"Quoted,\" she said -- and then (parenthetically) left; 3 days later: done!"),
    "code": ("def f(x, *args, **kw):\n    \"\"\"Doc.\"\"\"\n    if x >= 0x1F and not kw.get('y'):\n"
             "        return [i ** 2 for i in range(x)]  # comment\n\treturn {'a': 1, \"b\": 2.5e-3}\n"
             "#include <stdio.h>\nint main(void){printf(\"%d\\n\", a[i++]<<=2); return 0;}\n"),
    "spaces": "a  b   c    d     e\t\tf \t g\n\nh \n i\r\n j   ",
    "whitespace_only": " \t\n\r\x0b\x0c   \n\n\n",
    "trailing_spaces": "end with spaces     ",
    "leading_spaces": "      start",
    "newline_runs": "para one.\n\n\n\npara two.\n \n \n  para three\n",
    "unicode_spaces": "a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g\u1680h\u202fi\u205fj \u00a0 k\u200bl\ufeffm",
    "digits": "0 1 12 123 1234 12345 123456 3.14159 1,000,000 2024-01-01 0xFF 1e10 ٣٤٥ ४२ 五六 ½ Ⅻ ²³",
    "contractions": ("it's don't they're we've I'm you'll he'd IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D "
                     "It'S Don'T They'Re We'Ve I'M You'Ll He'D it's'm ''s 's 't 're 've 'm 'll 'd 'x ' s"),
    "apostrophes": "rock'n'roll o'clock ’s ‘quoted’ '''triple''' 'S'T'RE'VE'M'LL'D",
    "emoji": "👍 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇺🇸 ❤️ 🧑🏿‍🚀 😀😃😄😁 a😀b 1😀2 😀😀😀😀😀😀😀😀",
    "cjk": "日本語のテキストです。中文文本，包括标点。한국어 텍스트입니다. 漢字かなカナ混じり文",
    "rtl": "مرحبا بالعالم، كيف حالك؟ שלום עולם! ‏mixed עברית and English‎ ١٢٣",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353\u0354 ก่ ที่ क्षि ḁ̈ \u0301alone",
    "control": "a\x00b\x01c\x07d\x1be\x7ff\x80g\x9fh\x1c\x1d\x1e\x1f i",
    "endoftext": "before<|endoftext|>after <|endoftext|> <|endoftext|><|endoftext|>end",
    "new_code_points": ("\U0001FAE8 \U0001FA77 \U0001FAEA \U0001CC00\U0001CC01 \U00010D50\U00010D51 "
                        "a\U00010D50b \U00011BC0\U00011BC1 x\U0001E5D0y 1\U0001E5F1 \U0001FAE9"),
    "unassigned_private": "\u0378 \U000E0080 \U0010FFFF \ufffe \uffff \ue000 \U000F0000 a\u0378b 1\U0010FFFFz",
    "greek_cyrillic": "Ελληνικά κείμενα και Русский текст, ёжик в тумане; ΑΒΓ",
    "math_symbols": "∀x∈ℝ: x²≥0 ⇒ √(x²)=|x| ∑∫∂ ≠ ≈ ∞ ℵ₀ ℕℤℚ",
    "long_token_candidates": "-" * 200 + "=" * 100 + "\n" + "." * 70 + "!" * 33 + " " * 300 + "x",
    "mixed_scripts": "Tokyo東京Москва123abcαβγ١٢٣😀!!",
    "single_chars": "a",
    "empty": "",
}

MULTILINGUAL = [SAMPLES[k] for k in ("emoji", "cjk", "rtl", "combining", "greek_cyrillic", "math_symbols",
                                     "digits", "contractions", "unicode_spaces")]


def _stdlib_texts():
    """English prose (pydoc's topic help) and Python source from the standard library, in a fixed order."""
    try:
        from pydoc_data.topics import topics
        yield from (topics[k] for k in sorted(topics))
    except ImportError:
        pass
    lib = sysconfig.get_paths()["stdlib"]
    for name in sorted(os.listdir(lib)):
        if name.endswith(".py"):
            try:
                with open(os.path.join(lib, name), encoding="utf-8") as f:
                    yield f.read()
            except (OSError, UnicodeDecodeError):
                continue


def mixed_text(n_bytes=2_000_000):
    """About n_bytes of UTF-8: English prose and code, every 8th chunk a multilingual paragraph."""
    parts, size, k = [], 0, 0
    while size < n_bytes:
        for text in _stdlib_texts():
            if k % 8 == 7:
                para = " ".join(MULTILINGUAL[(k // 8 + j) % len(MULTILINGUAL)] for j in range(3)) + "\n"
                parts.append(para)
                size += len(para.encode("utf-8"))
            parts.append(text)
            size += len(text.encode("utf-8"))
            k += 1
            if size >= n_bytes:
                break
    text = "".join(parts)
    return text.encode("utf-8")[:n_bytes].decode("utf-8", "ignore")

"""Markdown-ish text for descriptions, comments, subjects, tags and text attachments.

Why a pool of sentences: backups of a real Taiga are dominated by prose (jsonb history,
descriptions), whose compressibility decides restic's and pg_dump's sizes; Zipf-distributed
words in pre-made sentences give prose-like compression at C speed (see Text).
"""

from __future__ import annotations

import itertools
import math
import random

_COMMON_WORDS = """
the of and to in is it for that on with as this be are not by at from or have an was but
can we should when after before user story task issue sprint backlog board ticket bug fix
feature release deploy server client login page button form field error message value list
project team member owner status review test build version update delete create change
add remove move open close done ready blocked waiting priority severity high low normal
api endpoint request response timeout database query index cache queue worker job backup
restore media file upload download attachment image export import migration config setting
please check again works expected actual steps reproduce browser mobile desktop screen layout
design mockup copy text label translation date time week month customer feedback support
""".split()

_UNICODE_WORDS = [
    "Übergabe", "naïve", "café", "façade", "señal", "Ångström", "Größe", "déjà",
    "日本語", "東京", "привет", "données", "😀", "✅", "→", "€", "½", "Zürich",
]


def _make_vocab(rng: random.Random, n_synthetic: int = 3000) -> list[str]:
    """Common words first (Zipf weights make them frequent), then made-up words."""
    syll = ["ka", "to", "ri", "ne", "mo", "sa", "lu", "pe", "di", "vo", "ga", "zi", "fe",
            "ber", "tan", "lor", "mis", "quen", "dra", "sol", "vin", "tur", "pla", "ex"]
    words = list(_COMMON_WORDS)
    seen = set(words)
    while len(words) < len(_COMMON_WORDS) + n_synthetic:
        w = "".join(rng.choice(syll) for _ in range(rng.randint(1, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    # sprinkle unicode words at mid-frequency ranks
    for i, w in enumerate(_UNICODE_WORDS):
        words.insert(60 + 37 * i, w)
    return words


class Text:
    """Markdown-ish text built from a pool of pre-made sentences (Zipf-distributed words).

    Picking whole sentences keeps generation at C speed.  The pool grows with the scale
    (see text_for) so that from scale ~0.2 on it is far larger than a compressor's window
    and dumps compress like prose (zstd about 3.2x through restic); at small scales the
    whole pool fits in the window and dumps compress better (about 5x at scale 0.01).
    """

    def __init__(self, seed: int, n_sentences: int):
        rng = random.Random(f"{seed}:corpus")
        vocab = _make_vocab(rng)
        cum = list(itertools.accumulate(1.0 / (i + 1) ** 1.05 for i in range(len(vocab))))
        words = rng.choices(vocab, cum_weights=cum, k=n_sentences * 12)
        pool = []
        pos = 0
        for _ in range(n_sentences):
            k = rng.randint(4, 20)
            ws = words[pos:pos + k]
            pos += k
            if pos >= len(words) - 20:
                pos = 0
            r = rng.random()
            if r < 0.04:
                ws.insert(rng.randrange(len(ws)), "`%s_%s()`" % (ws[0], ws[-1]))
            elif r < 0.06:
                ws.append("https://tree.taiga.example/%s/%d" % (ws[1], rng.randrange(10000)))
            s = " ".join(ws)
            s = s[:1].upper() + s[1:] + rng.choice(".....?!:")
            r = rng.random()
            if r < 0.05:
                s = "- " + s
            elif r < 0.07:
                s = "## " + s
            pool.append(s + ("\n\n" if rng.random() < 0.2 else " "))
        self.pool = pool
        self.avg = sum(map(len, pool)) / len(pool)
        self.words = vocab[:400]

    def text(self, rng: random.Random, length: int) -> str:
        if length <= 0:
            return ""
        k = max(1, round(length / self.avg))
        return "".join(rng.choices(self.pool, k=k)).rstrip()

    def rand_text(self, rng: random.Random, mean: float, empty: float = 0.0, cap: int = 60000) -> str:
        """Log-normal length around `mean` characters, empty with probability `empty`."""
        if empty and rng.random() < empty:
            return ""
        n = int(rng.lognormvariate(math.log(mean) - 0.5, 1.0))
        return self.text(rng, min(n, cap))

    def subject(self, rng: random.Random) -> str:
        s = rng.choice(self.pool).strip()
        return s[:140]

    def tags(self, rng: random.Random) -> list[str]:
        return [rng.choice(self.words) for _ in range(rng.choice((0, 0, 1, 1, 2, 3)))]


def text_for(seed: int, scale: float) -> Text:
    """The corpus for a dataset of `scale`: its pool grows with the scale (see Text)."""
    n = int(min(250_000, max(2_000, scale * 250_000)))
    return Text(seed, n)

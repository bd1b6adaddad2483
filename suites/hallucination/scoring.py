"""Object hallucination: POPE and CHAIR scorers for real model outputs and the synthetic Shapes-VLM scene
generator (interventions on a trained model: `attnbench.intervene.apply_intervention`).

POPE (Li et al. 2023): question file JSONL `{"question_id", "image", "text", "label": yes|no}`, answer file
JSONL `{"question", "answer"}` (or `"text"`) in the same order, or matched by `question_id` when both
carry it. Parsing as upstream: the text before the first '.', commas removed, split on spaces; any of
No / no / not → no, else yes (`strict=True`: the first word only). Positive = yes.

CHAIR (Rohrbach et al. 2018): captions → object mentions through a synonym table of the 80 COCO
categories (our own table; regex tokeniser and rule singulariser instead of NLTK/pattern.en, which
need downloads), mentions not de-duplicated. CHAIR_i = hallucinated mentions / mentions; CHAIR_s =
captions with ≥ 1 hallucination / captions; recall = Σ|mentioned ∩ GT| / Σ|GT|.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# -- POPE ----------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (a JSON list file is accepted too)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def parse_yes_no(text: str, strict: bool = False) -> str:
    """POPE's answer parsing: "no" if No/no/not occurs before the first '.', else "yes"."""
    words = text.split(".")[0].replace(",", "").split(" ")
    words = [w for w in words if w]
    if strict:
        return "no" if words and words[0].lower() in ("no", "not") else "yes"
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def confusion_scores(labels: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1, yes-ratio and the confusion counts (positive = yes)."""
    tp = sum(lab == "yes" and p == "yes" for lab, p in zip(labels, preds, strict=True))
    fp = sum(lab == "no" and p == "yes" for lab, p in zip(labels, preds, strict=True))
    tn = sum(lab == "no" and p == "no" for lab, p in zip(labels, preds, strict=True))
    fn = sum(lab == "yes" and p == "no" for lab, p in zip(labels, preds, strict=True))
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"acc": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}


def pope_score(questions: Sequence[Mapping[str, Any]], answers: Sequence[Mapping[str, Any]],
               strict: bool = False) -> dict[str, float]:
    """Score POPE answers against the question file's labels.

    Answers align by order (upstream) unless every record on both sides has `question_id`; when an
    answer carries its question text, it must match the question's `text`.
    """
    if questions and answers and all("question_id" in r for r in (*questions, *answers)):
        by_id = {r["question_id"]: r for r in answers}
        missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
        if missing:
            raise ValueError(f"POPE: no answer for question_id {missing[:5]}")
        answers = [by_id[q["question_id"]] for q in questions]
    if len(questions) != len(answers):
        raise ValueError(f"POPE: {len(questions)} questions but {len(answers)} answers")
    labels, preds = [], []
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        if "question" in a and "text" in q and a["question"].strip() != q["text"].strip():
            raise ValueError(f"POPE: answer {i} is for {a['question']!r}, not {q['text']!r}")
        labels.append(str(q["label"]).strip().lower())
        preds.append(parse_yes_no(str(a.get("answer", a.get("text", ""))), strict))
    return confusion_scores(labels, preds)


def pope_files(question_file: str | Path, answer_file: str | Path, strict: bool = False) -> dict[str, float]:
    return pope_score(read_jsonl(question_file), read_jsonl(answer_file), strict)


# -- CHAIR ---------------------------------------------------------------------------------------
# canonical COCO category: extra surface forms (singular; our own list)
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "man", "woman", "boy", "girl", "child", "kid", "baby", "guy", "lady", "player",
               "skier", "surfer", "skateboarder", "snowboarder", "rider", "pedestrian", "adult", "teenager",
               "toddler", "gentleman", "worker", "biker", "cyclist", "batter", "pitcher", "catcher", "umpire"),
    "bicycle": ("bike", "cycle"), "car": ("automobile", "taxi", "sedan", "suv", "van", "jeep"),
    "motorcycle": ("motorbike", "scooter", "moped"), "airplane": ("plane", "jet", "aircraft", "airliner"),
    "bus": ("minibus", "trolley"), "train": ("locomotive", "tram", "subway"), "truck": ("pickup", "lorry"),
    "boat": ("ship", "sailboat", "kayak", "canoe", "yacht", "ferry"), "traffic light": ("stoplight", "traffic signal"),
    "fire hydrant": ("hydrant",), "stop sign": (), "parking meter": ("meter",), "bench": (),
    "bird": ("pigeon", "seagull", "duck", "parrot", "gull", "goose"), "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"), "horse": ("pony", "foal"), "sheep": ("lamb", "ram"),
    "cow": ("cattle", "calf", "bull", "ox"),
    "elephant": (), "bear": ("grizzly",), "zebra": (), "giraffe": (), "backpack": ("knapsack",),
    "umbrella": ("parasol",), "handbag": ("purse", "bag"), "tie": ("necktie", "bow tie"), "suitcase": ("luggage",),
    "frisbee": (), "skis": ("ski",), "snowboard": (), "sports ball": ("ball", "football", "baseball", "basketball",
                                                                    "soccer ball", "tennis ball"),
    "kite": (), "baseball bat": ("bat",), "baseball glove": ("glove", "mitt"), "skateboard": (),
    "surfboard": ("board",), "tennis racket": ("racket", "racquet"), "bottle": (), "wine glass": (),
    "cup": ("mug",), "fork": (), "knife": (), "spoon": (), "bowl": (), "banana": (), "apple": (),
    "sandwich": ("burger", "sub"), "orange": (), "broccoli": (), "carrot": (), "hot dog": (), "pizza": (),
    "donut": ("doughnut",), "cake": ("cupcake",), "chair": ("stool", "seat"), "couch": ("sofa",),
    "potted plant": ("plant", "houseplant"), "bed": (), "dining table": ("table", "desk"), "toilet": ("toilet seat",),
    "tv": ("television", "monitor", "screen"), "laptop": ("computer", "notebook"), "mouse": (),
    "remote": ("controller",), "keyboard": (), "cell phone": ("phone", "cellphone", "smartphone"),
    "microwave": (), "oven": ("stove",), "toaster": (), "sink": (), "refrigerator": ("fridge",), "book": (),
    "clock": (), "vase": (), "scissors": (), "teddy bear": ("teddy",), "hair drier": ("hair dryer", "hairdryer"),
    "toothbrush": (),
}
IRREGULAR_PLURALS = {"men": "man", "women": "woman", "children": "child", "people": "people", "mice": "mouse",
                     "knives": "knife", "geese": "goose", "sheep": "sheep", "skis": "skis", "scissors": "scissors",
                     "teeth": "tooth", "feet": "foot", "buses": "bus", "glasses": "glass", "benches": "bench",
                     "sandwiches": "sandwich", "couches": "couch", "boxes": "box", "dishes": "dish",
                     "calves": "calf", "shelves": "shelf", "leaves": "leaf", "ponies": "pony", "bus": "bus",
                     "giraffes": "giraffe", "cattle": "cattle"}
ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")


def singular(word: str) -> str:
    """Rule singulariser with an irregular table (offline stand-in for pattern.en)."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class SynonymTable:
    """Surface form (one or two words) → canonical category."""

    to_canonical: Mapping[str, str]

    @classmethod
    def coco(cls) -> SynonymTable:
        return cls.from_mapping(COCO_SYNONYMS)

    @classmethod
    def from_mapping(cls, syn: Mapping[str, Iterable[str]]) -> SynonymTable:
        out = {}
        for canon, forms in syn.items():
            for form in (canon, *forms):
                out[form] = canon
        return cls(out)

    @classmethod
    def from_file(cls, path: str | Path) -> SynonymTable:
        """LisaAnne-style file: one category a line, `canonical, synonym, ...`."""
        rows = [[w.strip() for w in line.split(",") if w.strip()] for line in Path(path).read_text().splitlines()]
        return cls.from_mapping({r[0]: r[1:] for r in rows if r})


def caption_objects(caption: str, table: SynonymTable | None = None) -> list[str]:
    """Canonical object mentions of a caption, in order, not de-duplicated."""
    table = table or SynonymTable.coco()
    words = [singular(w) for w in re.findall(r"[a-z]+", caption.lower())]
    out: list[tuple[str, str]] = []  # (canonical, surface form)
    i = 0
    while i < len(words):
        w, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
        if w in ("baby", "adult") and table.to_canonical.get(nxt) in ANIMALS:
            i += 1  # "baby elephant" is an elephant, not a person
            continue
        if w == "passenger" and nxt in ("jet", "train"):
            i += 1
            continue
        pair = f"{w} {nxt}"
        if nxt and pair in table.to_canonical:
            out.append((table.to_canonical[pair], pair))
            i += 2
            continue
        if w in table.to_canonical:
            out.append((table.to_canonical[w], w))
        i += 1
    has_toilet = any(c == "toilet" for c, _ in out)
    return [c for c, form in out if not (has_toilet and form == "seat")]  # a toilet's seat is no chair


@dataclass
class ChairResult:
    chair_i: float
    chair_s: float
    recall: float
    mean_mentions: float
    hallucinated: list[list[str]]

    def as_dict(self) -> dict[str, float]:
        return {"chair_i": self.chair_i, "chair_s": self.chair_s, "chair_recall": self.recall,
                "mean_mentions": self.mean_mentions}


def chair_from_mentions(mentions: Sequence[Sequence[Any]], gt: Sequence[set[Any]]) -> ChairResult:
    """CHAIR from per-caption object mentions and per-caption ground-truth object sets."""
    n_ment = n_hall = n_caps_hall = 0
    hit = total_gt = 0
    hall: list[list[Any]] = []
    for ment, truth in zip(mentions, gt, strict=True):
        bad = [m for m in ment if m not in truth]
        hall.append(bad)
        n_ment += len(ment)
        n_hall += len(bad)
        n_caps_hall += bool(bad)
        hit += len(set(ment) & truth)
        total_gt += len(truth)
    n = len(hall)
    return ChairResult(n_hall / n_ment if n_ment else 0.0, n_caps_hall / n if n else 0.0,
                       hit / total_gt if total_gt else 0.0, n_ment / n if n else 0.0, hall)


def chair_score(captions: Sequence[Mapping[str, Any]], gt_objects: Mapping[Any, Iterable[str]],
                table: SynonymTable | None = None, image_key: str = "image_id",
                caption_key: str = "caption") -> ChairResult:
    """CHAIR of `{"image_id", "caption"}` records against `image_id → canonical objects`."""
    table = table or SynonymTable.coco()
    mentions = [caption_objects(str(c[caption_key]), table) for c in captions]
    gt = [set(gt_objects[c[image_key]]) for c in captions]
    return chair_from_mentions(mentions, gt)


def load_gt_objects(*, gt_jsonl: str | Path | None = None, instances_json: str | Path | None = None,
                    captions_json: str | Path | None = None, table: SynonymTable | None = None
                    ) -> dict[Any, set[str]]:
    """`image_id → canonical objects` from a JSONL `{"image_id", "objects"}` and/or COCO instances JSON
    (category names) ∪ objects parsed from COCO reference captions."""
    table = table or SynonymTable.coco()
    out: dict[Any, set[str]] = {}
    if gt_jsonl:
        for r in read_jsonl(gt_jsonl):
            key = r.get("image_id", r.get("image"))
            out.setdefault(key, set()).update(table.to_canonical.get(o, o) for o in r["objects"])
    if instances_json:
        data = json.loads(Path(instances_json).read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        for a in data["annotations"]:
            out.setdefault(a["image_id"], set()).add(table.to_canonical.get(names[a["category_id"]],
                                                                            names[a["category_id"]]))
    if captions_json:
        for a in json.loads(Path(captions_json).read_text())["annotations"]:
            out.setdefault(a["image_id"], set()).update(caption_objects(a["caption"], table))
    return out


# -- Shapes-VLM scenes ---------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "h-bar", "v-bar", "dot", "frame")


@dataclass(frozen=True)
class SceneConfig:
    """Scenes of coloured shapes: `grid`×`grid` cells, one object per cell, classes = shape × size band.

    Language prior (stated, exact): classes `(2i, 2i+1)` for `i < n_pairs` are (anchor, partner) pairs.
    A scene is `k` draws (k ∈ [min_objects, max_objects // 2]) without replacement from the drawable
    classes (anchors and unpaired classes) with a Zipf prior `p ∝ rank^-prior`; each drawn anchor
    brings its partner with probability `pair_prob`. So P(partner ∈ scene | anchor ∈ scene) =
    `pair_prob` and a partner never appears without its anchor: a "yes" to an absent partner next
    to its anchor is the prior-driven hallucination POPE-adversarial and CHAIR probe.
    """

    image: int = 32
    grid: int = 2
    max_objects: int = 4
    n_classes: int = 10
    prior: float = 0.8  # Zipf exponent over the drawable classes
    n_pairs: int = 5  # co-occurring (anchor, partner) pairs (2i, 2i+1)
    pair_prob: float = 0.75  # P(partner | anchor)
    jitter: int = 2

    def __post_init__(self) -> None:
        if self.n_classes > 3 * len(SHAPES):
            raise ValueError(f"at most {3 * len(SHAPES)} classes (10 shapes × 3 size bands)")
        if self.max_objects > self.grid ** 2 or self.max_objects > self.n_classes:
            raise ValueError("max_objects exceeds the grid cells or the classes")
        if self.max_objects < 2:
            raise ValueError("max_objects must be ≥ 2 (a draw may bring an anchor and its partner)")
        if not 0 <= 2 * self.n_pairs <= self.n_classes or len(self.drawable) < self.max_objects // 2:
            raise ValueError("n_pairs leaves too few drawable classes for max_objects // 2 draws")
        if not 0.0 <= self.pair_prob <= 1.0:
            raise ValueError("pair_prob must be in [0, 1]")

    def class_name(self, c: int) -> str:
        band = c // len(SHAPES)
        return SHAPES[c % len(SHAPES)] + ("", "-small", "-large")[band]

    @property
    def drawable(self) -> list[int]:
        """Classes a draw can pick: anchors (2i) and unpaired classes (partners only come with anchors)."""
        return [c for c in range(self.n_classes) if not (c < 2 * self.n_pairs and c % 2)]

    @property
    def class_prior(self) -> np.ndarray:
        """Draw probabilities `[n_classes]` (0 on partners): Zipf over the drawable classes by rank."""
        p = np.zeros(self.n_classes)
        d = self.drawable
        p[d] = (np.arange(len(d)) + 1.0) ** -self.prior
        return p / p.sum()

    def partner(self, c: int) -> int | None:
        """The other member of c's pair (anchor ↔ partner), or None."""
        if c < 2 * self.n_pairs:
            return c ^ 1
        return None

    def draws(self, min_objects: int = 1) -> tuple[int, int]:
        """Range `[lo, hi]` of draws per scene (each draw adds 1 or 2 objects)."""
        hi = self.max_objects // 2
        return min(max(min_objects, 1), hi), hi


def _shape_mask(kind: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay, dist = np.abs(dx), np.abs(dy), np.hypot(dx, dy)
    cheb = np.maximum(ax, ay)
    masks = (lambda: dist <= r, lambda: cheb <= 0.8 * r, lambda: (dy <= 0.8 * r) & (dy >= -r) & (ax <= (dy + r) / 2),
             lambda: ((ax <= r / 4) & (ay <= r)) | ((ay <= r / 4) & (ax <= r)),
             lambda: (dist <= r) & (dist >= 0.55 * r), lambda: ax + ay <= r,
             lambda: (ay <= r / 4 + 0.5) & (ax <= r), lambda: (ax <= r / 4 + 0.5) & (ay <= r),
             lambda: dist <= 0.4 * r + 0.5, lambda: (cheb <= r) & (cheb >= 0.6 * r))
    return masks[kind]()


def sample_scene(rng: np.random.Generator, cfg: SceneConfig, min_objects: int = 1) -> list[int]:
    """Distinct object classes of one scene (sorted): Zipf draws, each anchor with its partner at `pair_prob`."""
    lo, hi = cfg.draws(min_objects)
    k = int(rng.integers(lo, hi + 1))
    prior = cfg.class_prior
    drawn = rng.choice(cfg.n_classes, size=k, replace=False, p=prior)
    objs = [int(c) for c in drawn]
    for c in drawn:
        p = cfg.partner(int(c))
        if p is not None and rng.random() < cfg.pair_prob:
            objs.append(p)
    return sorted(objs)


def cooccurrence(objs: Sequence[Sequence[int]], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class counts `[C]` and pair counts `[C, C]` (a, b both present, a ≠ b) over scenes."""
    freq = np.zeros(n_classes)
    co = np.zeros((n_classes, n_classes))
    for o in objs:
        idx = np.asarray(list(o), dtype=np.int64)
        freq[idx] += 1
        co[np.ix_(idx, idx)] += 1
    np.fill_diagonal(co, 0)
    return freq, co


def render(rng: np.random.Generator, cfg: SceneConfig, objs: Sequence[int]) -> np.ndarray:
    """`[image, image, 3]` float32 in [0, 1]: dark noisy background, one object per random cell."""
    s = cfg.image
    img = np.clip(rng.normal(0.1, 0.05, (s, s, 3)), 0, 1).astype(np.float32)
    cell = s // cfg.grid
    cells = rng.choice(cfg.grid ** 2, size=len(objs), replace=False)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    base_r = cell / 4  # radius 4–6 at 16-px cells
    for c, where in zip(objs, cells, strict=True):
        band = c // len(SHAPES)
        lo, hi = ((1.0, 1.5), (0.7, 0.9), (1.6, 1.8))[band]
        r = base_r * rng.uniform(lo, hi)
        cy = (where // cfg.grid + 0.5) * cell + rng.integers(-cfg.jitter, cfg.jitter + 1)
        cx = (where % cfg.grid + 0.5) * cell + rng.integers(-cfg.jitter, cfg.jitter + 1)
        m = _shape_mask(c % len(SHAPES), xx - cx, yy - cy, r)
        img[m] = rng.uniform(0.4, 1.0, 3).astype(np.float32)
    return img


def scenes(rng: np.random.Generator, cfg: SceneConfig, n: int, min_objects: int = 1
           ) -> tuple[np.ndarray, list[list[int]]]:
    """`n` rendered scenes `[n, S, S, 3]` and their sorted object lists."""
    objs = [sample_scene(rng, cfg, min_objects) for _ in range(n)]
    return np.stack([render(rng, cfg, o) for o in objs]), objs


def pope_questions(rng: np.random.Generator, objs: Sequence[Sequence[int]], n_classes: int, split: str,
                   per_image: int = 2, partner: Callable[[int], int | None] | None = None
                   ) -> list[tuple[int, int, str]]:
    """POPE questions `(image index, class, label)`: `per_image` positives and negatives per image.

    random: negatives uniform over absent classes; popular: the most frequent classes over these
    images that are absent; adversarial: the stated co-occurring partner (`partner`) of the paired
    positive, then of any present object, when absent; otherwise the absent class co-occurring most
    with the positive (counted over these images); both fall back to random when they run out.
    """
    freq, co = cooccurrence(objs, n_classes)
    out = []
    for i, o in enumerate(objs):
        pos = list(rng.choice(o, size=min(per_image, len(o)), replace=False))
        absent = [c for c in range(n_classes) if c not in o]
        negs: list[int] = []
        for p in pos:
            pool = [c for c in absent if c not in negs]
            if split == "popular":
                pick = max(pool, key=lambda c: (freq[c], -c))
            elif split == "adversarial":
                stated = [b for a in (p, *o) if partner and (b := partner(int(a))) is not None and b in pool]
                best = max(pool, key=lambda c: (co[p, c], freq[c], -c))
                pick = stated[0] if stated else best if co[p, best] > 0 else int(rng.choice(pool))
            elif split == "random":
                pick = int(rng.choice(pool))
            else:
                raise ValueError(f"unknown POPE split {split!r}; valid: random, popular, adversarial")
            negs.append(pick)
        out += [(i, int(p), "yes") for p in pos] + [(i, int(c), "no") for c in negs]
    return out

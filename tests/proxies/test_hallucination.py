"""POPE / CHAIR scorers against hand-computed examples; Shapes-VLM generator; a tiny suite run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnbench.presets import Preset
from attnbench.registry import METHODS, SUITES
from attnbench.suite import ResolvedCase
from attnbench.suites.hallucination import model as hm
from attnbench.suites.hallucination import scoring as hal


def test_pope_parse_and_scores(tmp_path):
    assert hal.parse_yes_no("No, there is not.") == "no"
    assert hal.parse_yes_no("Yes. There is no dog.") == "yes"  # only the text before the first '.'
    assert hal.parse_yes_no("There is not a dog") == "no"
    assert hal.parse_yes_no("Nope, not at all", strict=True) == "yes"
    labels = ["yes", "yes", "no", "no", "yes"]
    answers = ["Yes.", "No.", "Yes, there is.", "No", "yes"]
    qf, af = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    qf.write_text("\n".join(json.dumps({"question_id": i, "image": f"{i}.jpg", "text": f"Is there a x{i}?",
                                        "label": lab}) for i, lab in enumerate(labels)))
    af.write_text("\n".join(json.dumps({"question": f"Is there a x{i}?", "answer": a}) for i, a in enumerate(answers)))
    s = hal.pope_files(qf, af)
    # tp = 2 (0, 4), fn = 1 (1), fp = 1 (2), tn = 1 (3)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (2, 1, 1, 1)
    assert s["acc"] == pytest.approx(3 / 5) and s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(2 / 3)
    assert s["yes_ratio"] == pytest.approx(3 / 5)
    bad = [{"question": "Is there a cat?", "answer": "yes"}] * 5
    with pytest.raises(ValueError):
        hal.pope_score(hal.read_jsonl(qf), bad)


def test_pope_matches_by_question_id():
    qs = [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]
    ans = [{"question_id": 2, "text": "no"}, {"question_id": 1, "text": "yes"}]
    assert hal.pope_score(qs, ans)["acc"] == 1.0


def test_chair_hand_example(tmp_path):
    caps = [{"image_id": 1, "caption": "A man rides a bike next to two dogs."},
            {"image_id": 2, "caption": "A cat sleeps on a sofa near a laptop."},
            {"image_id": 3, "caption": "A toilet seat and a sink."}]
    gt = tmp_path / "gt.jsonl"
    gt.write_text("\n".join(json.dumps(r) for r in [{"image_id": 1, "objects": ["person", "bicycle", "car"]},
                                                    {"image_id": 2, "objects": ["cat", "couch"]},
                                                    {"image_id": 3, "objects": ["toilet", "sink"]}]))
    r = hal.chair_score(caps, hal.load_gt_objects(gt_jsonl=gt))
    # mentions: [person, bicycle, dog] [cat, couch, laptop] [toilet, sink]: 8, hallucinated: dog, laptop
    assert r.hallucinated == [["dog"], ["laptop"], []]
    assert r.chair_i == pytest.approx(2 / 8) and r.chair_s == pytest.approx(2 / 3)
    assert r.recall == pytest.approx((2 + 2 + 2) / (3 + 2 + 2))


def test_chair_text_rules():
    assert hal.caption_objects("a baby elephant with children") == ["elephant", "person"]
    assert hal.caption_objects("the hot dogs and a wine glass") == ["hot dog", "wine glass"]
    assert hal.caption_objects("two dogs, two dogs") == ["dog", "dog"]  # mentions are not de-duplicated


def test_scenes_and_pope_questions():
    cfg = hal.SceneConfig()
    img, objs = hal.scenes(np.random.default_rng(0), cfg, 64, min_objects=2)
    assert img.shape == (64, 32, 32, 3) and 0.0 <= img.min() and img.max() <= 1.0
    assert all(2 <= len(o) <= 4 and o == sorted(set(o)) for o in objs)
    for split in ("random", "popular", "adversarial"):
        qs = hal.pope_questions(np.random.default_rng(1), objs, 10, split, partner=cfg.partner)
        assert len(qs) == 4 * 64 and sum(q[2] == "yes" for q in qs) == 2 * 64
        assert all((q[1] in objs[q[0]]) == (q[2] == "yes") for q in qs)
    adv = hal.pope_questions(np.random.default_rng(1), objs, 10, "adversarial", partner=cfg.partner)
    for i, o in enumerate(objs):  # every absent partner of a present anchor is asked first
        traps = {p for a in o if (p := cfg.partner(a)) is not None and p not in o}
        negs = [c for j, c, lab in adv if j == i and lab == "no"]
        assert set(negs[:len(traps)]) <= traps or traps <= set(negs)


@pytest.mark.parametrize("n_pairs,pair_prob", [(4, 0.8), (3, 0.9), (2, 0.5)])
def test_cooccurrence_statistics_match_the_configuration(n_pairs, pair_prob):
    cfg = hal.SceneConfig(n_pairs=n_pairs, pair_prob=pair_prob)
    rng = np.random.default_rng(0)
    objs = [hal.sample_scene(rng, cfg) for _ in range(4000)]
    freq, co = hal.cooccurrence(objs, cfg.n_classes)
    for i in range(n_pairs):
        anchor, partner = 2 * i, 2 * i + 1
        assert co[anchor, partner] == freq[partner]  # a partner never appears without its anchor
        p = co[anchor, partner] / freq[anchor]  # P(partner | anchor)
        se = (pair_prob * (1 - pair_prob) / freq[anchor]) ** 0.5
        assert abs(p - pair_prob) < 4 * se + 1e-9, (anchor, p)
    drawable = cfg.drawable
    assert all(freq[c] > 0 for c in drawable) and all(1 <= len(o) <= cfg.max_objects for o in objs)
    first = np.array([freq[c] for c in drawable])  # Zipf over the drawable classes: decreasing by rank
    assert (np.diff(first[:3]) < 0).all()
    with pytest.raises(ValueError):
        hal.SceneConfig(n_classes=10, n_pairs=5, max_objects=4, grid=2, pair_prob=1.5)


def test_tiny_suite_run_and_intervention():
    s = SUITES.get("hallucination")
    tiny = dict(steps=3, n_pool=64, pope_images=8, chair_images=8, d_model=16, batch_size=8, wall_cap_s=1e9,
                n_boot=50)
    base = s.cases(Preset("smoke", {"suite": {"hallucination": {"methods": ["mha"], **tiny}}}), METHODS)[0]
    rows = {r.metric: r.value for r in s.run(ResolvedCase.resolve(base, METHODS))}
    assert 0.0 <= rows["pope_adversarial_f1"] <= 1.0 and "pope_random_acc_blind" in rows and "chair_s" in rows
    assert rows["pope_random_acc_lo"] <= rows["pope_random_acc"] <= rows["pope_random_acc_hi"]
    case = s.cases(Preset("smoke", {"suite": {"hallucination": {"methods": ["softpag"], **tiny}}}), METHODS)[0]
    trained = len(hm._CACHE)
    got = {r.metric: r.value for r in s.run(ResolvedCase.resolve(case, METHODS))}
    assert len(hm._CACHE) == trained  # the intervention reuses the base trained for the mha case
    assert "delta_chair_s" in got and got["steps"] == rows["steps"]
    assert got["delta_pope_adversarial_acc_lo"] <= got["delta_pope_adversarial_acc"] \
        <= got["delta_pope_adversarial_acc_hi"]
    for method in ("consistedit", "brush"):  # editing methods: no image pair in the proxy, left out with why
        assert "hallucination proxy" in s.applies_to(METHODS.get(method), "reference")
    sweep = Preset("smoke", {"suite": {"hallucination": {"methods": ["gift"], "sweep": {"gift": [{"alpha": 2.5}]},
                                                         **tiny}}})
    cases = s.cases(sweep, METHODS)
    assert len(cases) == 2 and sorted(json.loads(c.options)["sweep_point"] for c in cases) == ['{"alpha": 2.5}', "{}"]


@pytest.mark.parametrize("method", ["gqa", "mqa"])
def test_grouped_methods_train_with_their_kv_heads(method: str) -> None:
    s = SUITES.get("hallucination")
    tiny = dict(steps=2, n_pool=32, pope_images=4, chair_images=4, d_model=16, batch_size=4, wall_cap_s=1e9)
    case = s.cases(Preset("smoke", {"suite": {"hallucination": {"methods": [method], **tiny}}}), METHODS)[0]
    rc = ResolvedCase.resolve(case, METHODS)
    assert rc.workload.heads_kv < rc.workload.heads_q  # grouped: the layers must be built with these kv heads
    rows = {r.metric: r.value for r in s.run(rc)}
    assert 0.0 <= rows["pope_adversarial_f1"] <= 1.0

"""Pixel and polygon metrics: cumulative confusion (Inria protocol), matched-polygon P/R/F1, PoLiS.

Inria's protocol sums intersections and unions over all tiles of a city (and over all
cities) before dividing: cumulative IoU and accuracy, never a mean of per-tile scores.
Polygon metrics match each predicted polygon to at most one reference polygon at
IoU >= 0.5 (greedily, best IoU first); PoLiS (Avbelj et al. 2015) is the mean distance
from each polygon's vertices to the other's outline, averaged both ways.
"""

from __future__ import annotations

import numpy as np
import shapely

from geolabel.vectorize.polygons import vertex_count



def pixel_scores(confusion: np.ndarray, class_names: tuple[str, ...] | None = None, positive: int = 1) -> dict:
    """IoU of `positive` (the building class), overall accuracy and per-class IoU of a confusion matrix."""
    conf = np.asarray(confusion, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    names = class_names or tuple(str(i) for i in range(len(tp)))
    total = conf.sum()
    return {
        "iou": float(iou[positive]) if positive < len(iou) else float("nan"),
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_iou": {names[i]: float(v) for i, v in enumerate(iou)},
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixels": int(total),
    }


def match_polygons(pred, truth, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matches (pred index, truth index, IoU) with IoU >= `threshold`, best IoU first."""
    pred = np.asarray(list(pred), dtype=object)
    truth = np.asarray(list(truth), dtype=object)
    if len(pred) == 0 or len(truth) == 0:
        return []
    tree = shapely.STRtree(truth)
    left, right = tree.query(pred, predicate="intersects")
    if len(left) == 0:
        return []
    inter = shapely.area(shapely.intersection(pred[left], truth[right]))
    union = shapely.area(pred[left]) + shapely.area(truth[right]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    order = np.argsort(-iou, kind="stable")
    used_p, used_t, matches = set(), set(), []
    for k in order.tolist():
        if iou[k] < threshold:
            break
        i, j = int(left[k]), int(right[k])
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((i, j, float(iou[k])))
    return matches


def _vertices(geom) -> np.ndarray:
    """Distinct vertices of all rings of a (multi)polygon."""
    rings = []
    for part in getattr(geom, "geoms", [geom]):
        for ring in [part.exterior, *part.interiors]:
            rings.append(np.asarray(ring.coords)[:-1])
    return np.concatenate(rings) if rings else np.zeros((0, 2))


def polis(a, b) -> float:
    """PoLiS distance between two polygons (CRS units): mean vertex-to-outline distance, both ways, averaged."""
    va, vb = _vertices(a), _vertices(b)
    if len(va) == 0 or len(vb) == 0:
        return float("nan")
    da = shapely.distance(shapely.points(va), b.boundary).mean()
    db = shapely.distance(shapely.points(vb), a.boundary).mean()
    return float(0.5 * da + 0.5 * db)


def polygon_scores(pred, truth, threshold: float = 0.5, found_threshold: float = 0.25) -> dict:
    """Precision, recall, F1 at IoU >= `threshold`, mean matched IoU, PoLiS and vertex counts, and
    the share of reference polygons found at IoU >= `found_threshold` (which a reference drawn a
    little off the imagery, as OSM often is, does not hide).

    `pred` and `truth` are sequences of polygons in one metric CRS (distances in its units).
    """
    pred, truth = list(pred), list(truth)
    matches = match_polygons(pred, truth, threshold)
    n_pred, n_true, n_match = len(pred), len(truth), len(matches)
    precision = n_match / n_pred if n_pred else float("nan")
    recall = n_match / n_true if n_true else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if n_match else 0.0
    distances = [polis(pred[i], truth[j]) for i, j, _ in matches]
    pv = [vertex_count([g]) for g in pred]
    tv = [vertex_count([g]) for g in truth]
    matched_pv = [pv[i] for i, _, _ in matches]
    matched_tv = [tv[j] for _, j, _ in matches]
    return {
        "predicted": n_pred,
        "reference": n_true,
        "matched": n_match,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        f"found_at_{found_threshold:g}": len(match_polygons(pred, truth, found_threshold)) / n_true if n_true else float("nan"),
        "mean_matched_iou": float(np.mean([m[2] for m in matches])) if matches else float("nan"),
        "polis": float(np.mean(distances)) if distances else float("nan"),
        "vertices_predicted": int(sum(pv)),
        "vertices_reference": int(sum(tv)),
        "mean_vertices_predicted": float(np.mean(pv)) if pv else float("nan"),
        "mean_vertices_reference": float(np.mean(tv)) if tv else float("nan"),
        "vertex_ratio_matched": float(sum(matched_pv) / sum(matched_tv)) if matched_tv and sum(matched_tv) else float("nan"),
    }


def match_instances(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, threshold: float = 0.5,
                    min_valid: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches of two instance rasters (ids > 0, 0 = none) at pixel IoU >= `threshold`,
    best IoU first: (counted predicted ids (bool by id), counted reference ids (bool by id),
    matches (n, 3): predicted id, reference id, IoU).

    IoU is over the pixels where `valid`; instances with less than `min_valid` of their
    pixels valid are not counted (nor matched).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    valid = np.ones(pred.shape, bool) if valid is None else np.asarray(valid, bool)
    n_pred, n_true = int(pred.max(initial=0)) + 1, int(truth.max(initial=0)) + 1

    def counted(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        total = np.bincount(ids.ravel(), minlength=n)
        inside = np.bincount(ids[valid].ravel(), minlength=n)
        ok = (inside > 0) & (inside >= min_valid * total)
        ok[0] = False
        return inside, ok

    area_p, ok_p = counted(pred, n_pred)
    area_t, ok_t = counted(truth, n_true)
    both = valid & (pred > 0) & (truth > 0)
    keys, inter = np.unique(pred[both].astype(np.int64) * n_true + truth[both], return_counts=True)
    p_ids, t_ids = keys // n_true, keys % n_true
    usable = ok_p[p_ids] & ok_t[t_ids]
    p_ids, t_ids, inter = p_ids[usable], t_ids[usable], inter[usable]
    iou = inter / (area_p[p_ids] + area_t[t_ids] - inter)
    order = np.argsort(-iou, kind="stable")
    used_p, used_t, matches = set(), set(), []
    for k in order[iou[order] >= threshold].tolist():
        if p_ids[k] in used_p or t_ids[k] in used_t:
            continue
        used_p.add(p_ids[k])
        used_t.add(t_ids[k])
        matches.append((p_ids[k], t_ids[k], iou[k]))
    return ok_p, ok_t, np.asarray(matches, np.float64).reshape(-1, 3)


def instance_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None,
                    threshold: float = 0.5, found_threshold: float = 0.25, min_valid: float = 0.5) -> dict:
    """Building-level precision, recall and F1 of two instance rasters, matched one-to-one at pixel
    IoU >= `threshold` (`match_instances`), plus the share of reference buildings found at
    IoU >= `found_threshold` (a score that a reference drawn a little off the imagery, as OSM
    often is, does not hide). The pixel form of `polygon_scores`, for whole-city rasters."""
    ok_p, ok_t, matches = match_instances(pred, truth, valid, threshold, min_valid)
    found = len(match_instances(pred, truth, valid, found_threshold, min_valid)[2])
    predicted, reference, tp = int(ok_p.sum()), int(ok_t.sum()), len(matches)
    return {
        "predicted": predicted,
        "reference": reference,
        "matched": tp,
        "precision": float(tp / predicted) if predicted else float("nan"),
        "recall": float(tp / reference) if reference else float("nan"),
        "f1": float(2 * tp / (predicted + reference)) if predicted + reference else float("nan"),
        f"found_at_{found_threshold:g}": float(found / reference) if reference else float("nan"),
    }

"""Polygonisation by mesh approximation with right-angle regularity (Tasar et al., IGARSS 2018).

The label map is approximated by a labelled triangle mesh whose energy

    E = fidelity + lambda^2 * (vertex count) + mu * (right-angle irregularity)

is minimised, then each labelled region of the mesh becomes a polygon.

* Fine mesh: the vertices are the pixel corners where region boundaries turn or meet
  (plus extra lattice corners wherever a boundary segment would otherwise be missing
  from the Delaunay triangulation), triangulated by `scipy.spatial.Delaunay`. Unit
  pixel edges are Gabriel edges of the lattice, so after densifying the missing
  segments every boundary segment is a mesh edge: the triangulation is constrained
  to the boundaries and reproduces the label map exactly. Each triangle takes the
  label of the region that contains it (its majority class, here 100 %).
* Fidelity: the area of disagreement with the label map, measured for every boundary
  edge as the area between the edge and the pixel boundary it stands for (integrated
  along the edge: exact unless that boundary folds back, then an upper bound).
  Specks of nodata (255) smaller than (2 lambda)^2 inside a block take the nearest
  class first: missing pixels are not a region to approximate.
* Complexity: lambda (metres) is the side of the square of area that one vertex is
  worth: a vertex is kept only if removing it would mislabel more than lambda^2.
* Regularity: at each vertex of a building boundary, the deviation of the turning
  angle from the nearest multiple of 90 degrees (radians) times its shorter edge,
  weighted by mu (metres): long walls meeting at odd angles cost the most, pixel
  steps almost nothing. It is switched on after a first simplification.
* Operators: half-edge collapse along a boundary (greedy, best energy gain first),
  edge flips of unconstrained edges to unblock collapses, and continuous relocation
  of boundary vertices (pattern search). Every operation is accepted only if no
  triangle flips or degenerates and no region vanishes, so the mesh stays a valid
  triangulation: no self-intersections, and neighbouring regions share one boundary.
* Large rasters are processed block by block (optionally in parallel processes);
  vertices on block borders are fixed at pixel corners, so the pieces of an object
  cut by a seam meet exactly and are merged back into one polygon.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from scipy import ndimage
from scipy.spatial import Delaunay

from geolabel.classes import IGNORE, ClassMap
from geolabel.errors import InputError
from geolabel.progress import logger, progress

DEFAULT_LAMBDA = 0.5
"""Default complexity weight, metres: a vertex must save lambda^2 of mislabelled area."""
DEFAULT_MU = 0.5
"""Default right-angle regularity weight, metres (per metre of edge and radian of deviation)."""
DEFAULT_BLOCK = 1024
"""Default block size in pixels for large rasters."""

_HALF_PI = math.pi / 2
_EPS_AREA = 1e-6  # smallest accepted doubled triangle area, px^2
_UP, _DOWN, _LEFT, _RIGHT = 1, 2, 4, 8
_OPPOSITE = {_UP: _DOWN, _DOWN: _UP, _LEFT: _RIGHT, _RIGHT: _LEFT}


# --------------------------------------------------------------------------- boundaries


@dataclass
class _Chain:
    """A boundary between two regions, from junction to junction (or a closed loop)."""

    coords: np.ndarray  # (n, 2) float pixel corners (x=col, y=row); loops not repeated
    loop: bool
    frozen: bool  # on the raster border: never simplified (keeps seams exact)
    regular: bool  # borders a region whose outline should have right angles
    kept: list[int]  # indices of coords that are mesh vertices


def _regions(labels: np.ndarray, instances: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """4-connected regions of equal (class, instance): (region id map, class of each region)."""
    key = labels.astype(np.int64)
    if instances is not None:
        _, key = np.unique(key * (int(instances.max()) + 1) + instances.astype(np.int64), return_inverse=True)
        key = key.reshape(labels.shape)
    regions = np.zeros(labels.shape, np.int64)
    region_class: list[int] = []
    offset = 0
    for value in np.unique(key):
        comp, n = ndimage.label(key == value)
        inside = comp > 0
        regions[inside] = comp[inside] - 1 + offset
        cls = int(labels[inside][0])
        region_class.extend([cls] * n)
        offset += n
    return regions, np.asarray(region_class, np.int64)


def _trace_chains(regions: np.ndarray, region_class: np.ndarray, regular_classes: set[int]) -> list[_Chain]:
    """Walk the pixel-edge boundaries between regions into chains between junctions."""
    h, w = regions.shape
    pad = np.full((h + 2, w + 2), -1, np.int64)
    pad[1:-1, 1:-1] = regions
    vert = pad[1:-1, :-1] != pad[1:-1, 1:]  # (h, w+1): edge corner (r,c)-(r+1,c)
    horz = pad[:-1, 1:-1] != pad[1:, 1:-1]  # (h+1, w): edge corner (r,c)-(r,c+1)
    code = np.zeros((h + 1, w + 1), np.int64)
    code[1:, :] |= vert * _UP
    code[:-1, :] |= vert * _DOWN
    code[:, 1:] |= horz * _LEFT
    code[:, :-1] |= horz * _RIGHT
    bits = np.array([bin(i).count("1") for i in range(16)])
    degree = bits[code]
    junction = degree >= 3
    straight = (code == _UP | _DOWN) | (code == _LEFT | _RIGHT)
    w1 = w + 1
    step = {_UP: -w1, _DOWN: w1, _LEFT: -1, _RIGHT: 1}
    codes = code.ravel().tolist()
    is_junction = junction.ravel().tolist()
    is_straight = straight.ravel().tolist()
    single = {_UP: _UP, _DOWN: _DOWN, _LEFT: _LEFT, _RIGHT: _RIGHT}

    def side_regions(k: int, d: int) -> tuple[int, int]:
        r, c = divmod(k, w1)
        if d in (_UP, _DOWN):
            rr = r if d == _DOWN else r - 1
            return int(pad[rr + 1, c]), int(pad[rr + 1, c + 1])
        cc = c if d == _RIGHT else c - 1
        return int(pad[r, cc + 1]), int(pad[r + 1, cc + 1])

    def make(path: list[int], loop: bool, first_dir: int) -> _Chain:
        ra, rb = side_regions(path[0], first_dir)
        frozen = ra < 0 or rb < 0
        regular = any(x >= 0 and int(region_class[x]) in regular_classes for x in (ra, rb))
        idx = np.asarray(path, np.int64)
        coords = np.stack([idx % w1, idx // w1], axis=1).astype(np.float64)
        if loop:
            kept = [i for i, k in enumerate(path) if not is_straight[k]]
        else:
            kept = [0] + [i for i in range(1, len(path) - 1) if not is_straight[path[i]]] + [len(path) - 1]
        return _Chain(coords, loop, frozen, regular, kept)

    chains: list[_Chain] = []
    used: set[tuple[int, int]] = set()
    visited = np.zeros(code.size, bool)
    for start in np.flatnonzero(junction.ravel()).tolist():
        for d0 in (_UP, _DOWN, _LEFT, _RIGHT):
            if not codes[start] & d0 or (start, d0) in used:
                continue
            path = [start]
            k, d = start, d0
            while True:
                k += step[d]
                path.append(k)
                if is_junction[k]:
                    used.add((k, _OPPOSITE[d]))
                    break
                visited[k] = True
                d = single[codes[k] & ~_OPPOSITE[d]]
            used.add((start, d0))
            chains.append(make(path, False, d0))
    # closed loops: boundary corners not reached from any junction
    rest = (degree.ravel() == 2) & ~visited & ~straight.ravel()
    for start in np.flatnonzero(rest).tolist():
        if visited[start]:
            continue
        d0 = _RIGHT if codes[start] & _RIGHT else _LEFT
        d = d0
        path = [start]
        visited[start] = True
        k = start
        while True:
            k += step[d]
            if k == start:
                break
            path.append(k)
            visited[k] = True
            d = single[codes[k] & ~_OPPOSITE[d]]
        chains.append(make(path, True, d0))
    return chains


# --------------------------------------------------------------------------- fidelity


def _lobe_area(ax: float, ay: float, bx: float, by: float, path: np.ndarray) -> float:
    """Area between segment a-b and the polyline a, path..., b.

    Integrated along a-b as sum |v| |du| (v: signed distance to the line a-b, u: the
    position along it), exact for every polyline that advances along a-b and an upper
    bound for one that folds back. A zero-length a-b gives the polyline's own area.
    """
    if len(path) < 48:
        return _lobe_area_py(ax, ay, bx, by, path.tolist())
    return float(_lobe_areas(np.array([ax]), np.array([ay]), np.array([bx]), np.array([by]),
                             path, np.array([0]), np.array([len(path) - 1]))[0])


def _lobe_area_py(ax: float, ay: float, bx: float, by: float, path: list) -> float:
    dx, dy = bx - ax, by - ay
    length = math.hypot(dx, dy)
    pts = [(ax, ay), *path, (bx, by)]
    if length <= 1e-9:
        s = 0.0
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            s += x0 * y1 - x1 * y0
        return abs(s) * 0.5
    ex, ey = dx / length, dy / length
    total = 0.0
    u0 = v0 = 0.0
    for x, y in pts[1:]:
        rx, ry = x - ax, y - ay
        u1 = rx * ex + ry * ey
        v1 = ry * ex - rx * ey
        du = abs(u1 - u0)
        if du > 0:
            if v0 * v1 >= 0:
                total += abs(v0 + v1) * 0.5 * du
            else:
                total += (v0 * v0 + v1 * v1) / (2 * abs(v0 - v1)) * du
        u0, v0 = u1, v1
    return total


def _lobe_areas(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray,
                coords: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Vectorised `_lobe_area` for many edges; edge e's path is coords[first[e]:last[e]+1]."""
    n_path = last - first + 1
    size = n_path + 2
    ends = np.cumsum(size)
    starts = ends - size
    total = int(ends[-1])
    edge = np.repeat(np.arange(len(size)), size)
    pos = np.arange(total) - starts[edge]
    x = np.empty(total)
    y = np.empty(total)
    inner = (pos > 0) & (pos < size[edge] - 1)
    src = first[edge[inner]] + pos[inner] - 1
    x[inner], y[inner] = coords[src, 0], coords[src, 1]
    x[starts], y[starts] = ax, ay
    x[ends - 1], y[ends - 1] = bx, by
    dx, dy = bx - ax, by - ay
    length = np.hypot(dx, dy)
    safe = np.where(length > 1e-9, length, 1.0)
    ex, ey = (dx / safe)[edge], (dy / safe)[edge]
    rx, ry = x - ax[edge], y - ay[edge]
    u = rx * ex + ry * ey
    v = ry * ex - rx * ey
    du = np.abs(np.diff(u))
    v0, v1 = v[:-1], v[1:]
    same = v0 * v1 >= 0
    piece = np.where(same, np.abs(v0 + v1) * 0.5, (v0 * v0 + v1 * v1) / (2 * np.where(same, 1.0, np.abs(v0 - v1))))
    piece *= du
    shoe = x[:-1] * y[1:] - x[1:] * y[:-1]
    valid = np.ones(total - 1, bool)
    valid[ends[:-1] - 1] = False  # differences across two edges
    piece[~valid] = 0.0
    shoe[~valid] = 0.0
    area = np.add.reduceat(piece, starts)
    poly = np.abs(np.add.reduceat(shoe, starts)) * 0.5
    return np.where(length > 1e-9, area, poly)


def _deviation(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> float:
    """Deviation (radians) of the turn a->b->c from the nearest multiple of 90 degrees."""
    ux, uy, vx, vy = bx - ax, by - ay, cx - bx, cy - by
    if (ux == 0 and uy == 0) or (vx == 0 and vy == 0):
        return 0.0
    q = math.atan2(ux * vy - uy * vx, ux * vx + uy * vy) / _HALF_PI
    return abs(q - round(q)) * _HALF_PI


# --------------------------------------------------------------------------- the mesh


class LabelMesh:
    """A labelled triangle mesh of a region map, optimised by collapse, flip and relocation.

    Args:
        regions: (h, w) region ids (0..R-1), 4-connected.
        region_class: class id of each region.
        lam_px: complexity weight in pixels (lambda / pixel size).
        mu_px: regularity weight in pixels (mu / pixel size).
        regular_classes: classes whose outlines are pulled towards right angles.
    """

    def __init__(
        self,
        regions: np.ndarray,
        region_class: np.ndarray,
        lam_px: float,
        mu_px: float,
        regular_classes: set[int],
    ):
        self.regions = regions
        self.region_class = region_class
        self.vertex_cost = lam_px * lam_px
        self.angle_cost = mu_px
        self.chains = _trace_chains(regions, region_class, regular_classes)
        self._build()

    # ---- construction
    def _build(self) -> None:
        h, w = self.regions.shape
        while True:
            corner_id: dict[tuple[float, float], int] = {}
            xs: list[float] = []
            ys: list[float] = []

            def vid(x: float, y: float) -> int:
                key = (x, y)
                got = corner_id.get(key)
                if got is None:
                    got = corner_id[key] = len(xs)
                    xs.append(x)
                    ys.append(y)
                return got

            for x, y in ((0.0, 0.0), (float(w), 0.0), (0.0, float(h)), (float(w), float(h))):
                vid(x, y)
            chain_vids: list[list[int]] = []
            for ch in self.chains:
                chain_vids.append([vid(float(ch.coords[i, 0]), float(ch.coords[i, 1])) for i in ch.kept])
            pts = np.column_stack([xs, ys])
            tri = Delaunay(pts).simplices.astype(np.int64)
            n = len(xs)
            a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
            codes = np.concatenate([np.minimum(a, b) * n + np.maximum(a, b),
                                    np.minimum(b, c) * n + np.maximum(b, c),
                                    np.minimum(a, c) * n + np.maximum(a, c)])
            edge_set = np.unique(codes)
            missing = 0
            seqs = [np.asarray(v + [v[0]] if ch.loop else v, np.int64) for ch, v in zip(self.chains, chain_vids)]
            lens = np.array([max(len(s) - 1, 0) for s in seqs])
            if lens.sum():
                s0 = np.concatenate([s[:-1] for s in seqs])
                s1 = np.concatenate([s[1:] for s in seqs])
                ok = np.isin(np.minimum(s0, s1) * n + np.maximum(s0, s1), edge_set)
                owner = np.repeat(np.arange(len(seqs)), lens)
                seg_index = np.arange(len(s0)) - np.repeat(np.cumsum(lens) - lens, lens)
                for ci, j in zip(owner[~ok].tolist(), seg_index[~ok].tolist()):
                    ch = self.chains[ci]
                    i0 = ch.kept[j]
                    i1 = ch.kept[j + 1] if j + 1 < len(ch.kept) else ch.kept[0] + len(ch.coords)
                    extra = {i % len(ch.coords) for i in range(i0 + 1, i1)}
                    missing += len(extra)
                    ch.kept = sorted(set(ch.kept) | extra) if extra else ch.kept
            if missing == 0:
                break
        # orient every triangle counter-clockwise in (x, y)
        px, py = pts[:, 0], pts[:, 1]
        cross = (px[b] - px[a]) * (py[c] - py[a]) - (py[b] - py[a]) * (px[c] - px[a])
        keep = np.abs(cross) > _EPS_AREA
        tri = tri[keep]
        flip = cross[keep] < 0
        tri[flip] = tri[flip][:, [0, 2, 1]]
        cx = px[tri].mean(axis=1)
        cy = py[tri].mean(axis=1)
        rows = np.clip(np.floor(cy).astype(np.int64), 0, h - 1)
        cols = np.clip(np.floor(cx).astype(np.int64), 0, w - 1)
        self.px: list[float] = px.tolist()
        self.py: list[float] = py.tolist()
        self.tri: list[list[int]] = tri.tolist()
        self.tlab: list[int] = self.regions[rows, cols].tolist()
        self.talive: list[bool] = [True] * len(self.tri)
        self.vt: list[set[int]] = [set() for _ in range(n)]
        for t, (i, j, k) in enumerate(self.tri):
            self.vt[i].add(t)
            self.vt[j].add(t)
            self.vt[k].add(t)
        # chain bookkeeping: every vertex strictly inside a chain belongs to it
        self.vchain = [-1] * n
        self.vidx = [-1] * n
        self.vprev = [-1] * n
        self.vnext = [-1] * n
        self.vfixed = [True] * n
        self.ccount = [0] * len(self.chains)
        self.cstart = [-1] * len(self.chains)
        self.cend = [-1] * len(self.chains)
        for ci, (ch, _) in enumerate(zip(self.chains, chain_vids)):
            vids = [corner_id[(float(ch.coords[i, 0]), float(ch.coords[i, 1]))] for i in ch.kept]
            inner = range(len(vids)) if ch.loop else range(1, len(vids) - 1)
            for j in inner:
                v = vids[j]
                self.vchain[v] = ci
                self.vidx[v] = ch.kept[j]
                self.vprev[v] = vids[j - 1]
                self.vnext[v] = vids[(j + 1) % len(vids)]
                self.vfixed[v] = ch.frozen
            self.ccount[ci] = len(inner)
            if not ch.loop:
                self.cstart[ci], self.cend[ci] = vids[0], vids[-1]
        self.edge_err: dict[tuple[int, int], float] = {}
        # all chain paths in one array (loops stored twice so a wrapping range is contiguous)
        parts = [np.vstack([ch.coords, ch.coords]) if ch.loop else ch.coords for ch in self.chains]
        sizes = [len(p) for p in parts]
        self.goff = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist() if parts else []
        self.G = np.vstack(parts) if parts else np.zeros((0, 2))

    # ---- energy terms
    def _anchor(self, v: int, ci: int, as_start: bool) -> int:
        if self.vchain[v] == ci:
            return self.vidx[v]
        return 0 if as_start else len(self.chains[ci].coords) - 1

    def _path_range(self, a: int, b: int, ci: int) -> tuple[int, int]:
        """[first, last] rows of self.G holding the pixel boundary of chain edge a->b."""
        ch = self.chains[ci]
        i = self._anchor(a, ci, True)
        j = self._anchor(b, ci, False)
        if ch.loop and j <= i:
            j += len(ch.coords)
        off = self.goff[ci]
        return off + i, off + j

    def _err(self, a: int, b: int, ci: int, ax: float, ay: float, bx: float, by: float) -> float:
        """Fidelity of chain edge a->b with a, b placed at the given positions."""
        i, j = self._path_range(a, b, ci)
        path = self.G[i : j + 1]
        if j - i == 1 and ax == path[0, 0] and ay == path[0, 1] and bx == path[1, 0] and by == path[1, 1]:
            return 0.0
        return _lobe_area(ax, ay, bx, by, path)

    def _cached_err(self, a: int, b: int, ci: int) -> float:
        key = (a, b)
        got = self.edge_err.get(key)
        if got is None:
            got = self.edge_err[key] = self._err(a, b, ci, self.px[a], self.py[a], self.px[b], self.py[b])
        return got

    def _irr(self, v: int, pos: dict[int, tuple[float, float]], prev: int | None = None, nxt: int | None = None) -> float:
        """Right-angle irregularity at chain vertex v (0 elsewhere), with optional overrides."""
        ci = self.vchain[v]
        if ci < 0 or self.vfixed[v] or not self.chains[ci].regular:
            return 0.0
        a = self.vprev[v] if prev is None else prev
        c = self.vnext[v] if nxt is None else nxt
        ax, ay = pos.get(a, (self.px[a], self.py[a]))
        bx, by = pos.get(v, (self.px[v], self.py[v]))
        cx, cy = pos.get(c, (self.px[c], self.py[c]))
        return _deviation(ax, ay, bx, by, cx, cy) * min(math.hypot(bx - ax, by - ay), math.hypot(cx - bx, cy - by))

    def collapse_gain(self, u: int, max_run: int = 3) -> tuple[float, int] | None:
        """Best energy change of removing chain vertex u and the k-1 that follow it (k <= max_run).

        Removing a short run at once gets past the local minima of one-vertex collapses
        (a one-pixel notch needs two vertices removed before the wall is straight again).
        Returns (delta, k), or None when u cannot be removed.
        """
        ci = self.vchain[u]
        if ci < 0 or self.vfixed[u]:
            return None
        ch = self.chains[ci]
        floor = 3 if ch.loop else 2 if self.cstart[ci] == self.cend[ci] else 0
        a = self.vprev[u]
        best: tuple[float, int] | None = None
        old = self._cached_err(a, u, ci)
        last = u
        before = self._irr(a, {}) + self._irr(u, {})
        for k in range(1, max_run + 1):
            if self.ccount[ci] - k < floor:
                break
            c = self.vnext[last]
            if c == a:
                break
            old += self._cached_err(last, c, ci)
            new = self._err(a, c, ci, self.px[a], self.py[a], self.px[c], self.py[c])
            delta = new - old - k * self.vertex_cost
            if self.angle_cost > 0 and ch.regular:
                after = self._irr(a, {}, nxt=c) + self._irr(c, {}, prev=a)
                delta += self.angle_cost * (after - before - self._irr(c, {}))
            if best is None or delta < best[0]:
                best = (delta, k)
            if self.vchain[c] != ci or self.vfixed[c]:
                break
            before += self._irr(c, {})
            last = c
        return best

    # ---- mesh operations
    def _cross(self, i: int, j: int, k: int, moved: int = -1, mx: float = 0.0, my: float = 0.0) -> float:
        px, py = self.px, self.py
        xi, yi = (mx, my) if i == moved else (px[i], py[i])
        xj, yj = (mx, my) if j == moved else (px[j], py[j])
        xk, yk = (mx, my) if k == moved else (px[k], py[k])
        return (xj - xi) * (yk - yi) - (yj - yi) * (xk - xi)

    def _label_edge(self, t: int, x: int, y: int) -> bool:
        other = (self.vt[x] & self.vt[y]) - {t}
        return not other or self.tlab[next(iter(other))] != self.tlab[t]

    def _flip(self, t1: int, x: int, y: int) -> bool:
        """Flip edge x-y of triangle t1 when unconstrained and the quad is convex."""
        other = (self.vt[x] & self.vt[y]) - {t1}
        if len(other) != 1:
            return False
        t2 = next(iter(other))
        if self.tlab[t1] != self.tlab[t2]:
            return False
        p = next(v for v in self.tri[t1] if v != x and v != y)
        q = next(v for v in self.tri[t2] if v != x and v != y)
        s1 = self._cross(p, q, x)
        s2 = self._cross(p, q, y)
        if not (s1 * s2 < 0 and abs(s1) > _EPS_AREA and abs(s2) > _EPS_AREA):
            return False
        n1 = [p, x, q] if self._cross(p, x, q) > 0 else [p, q, x]
        n2 = [p, q, y] if self._cross(p, q, y) > 0 else [p, y, q]
        self.tri[t1], self.tri[t2] = n1, n2
        self.vt[y].discard(t1)
        self.vt[x].discard(t2)
        self.vt[q].add(t1)
        self.vt[p].add(t2)
        return True

    def try_collapse(self, u: int, v: int, flips: int = 6) -> bool:
        """Half-edge collapse u -> v if the mesh stays valid (flipping edges to unblock it)."""
        for _ in range(flips + 1):
            shared = self.vt[u] & self.vt[v]
            if not shared:
                return False
            opp = {x for t in shared for x in self.tri[t] if x != u and x != v}
            nu = {x for t in self.vt[u] for x in self.tri[t]} - {u}
            nv = {x for t in self.vt[v] for x in self.tri[t]} - {v}
            if (nu & nv) != opp:
                return False
            for t in shared:
                i, j, k = self.tri[t]
                if self._label_edge(t, i, j) and self._label_edge(t, j, k) and self._label_edge(t, k, i):
                    return False
            blocked = None
            for t in self.vt[u] - shared:
                i, j, k = self.tri[t]
                if self._cross(i, j, k, u, self.px[v], self.py[v]) <= _EPS_AREA:
                    blocked = t
                    break
            if blocked is None:
                for t in shared:
                    self.talive[t] = False
                    for x in self.tri[t]:
                        self.vt[x].discard(t)
                for t in self.vt[u]:
                    self.tri[t] = [v if x == u else x for x in self.tri[t]]
                    self.vt[v].add(t)
                self.vt[u] = set()
                return True
            x, y = (z for z in self.tri[blocked] if z != u)
            if not self._flip(blocked, x, y):
                return False
        return False

    def _remove_from_chain(self, u: int) -> None:
        ci = self.vchain[u]
        a, b = self.vprev[u], self.vnext[u]
        if self.vchain[a] == ci:
            self.vnext[a] = b
        if self.vchain[b] == ci:
            self.vprev[b] = a
        self.edge_err.pop((a, u), None)
        self.edge_err.pop((u, b), None)
        self.vchain[u] = -1
        self.vfixed[u] = True
        self.ccount[ci] -= 1

    def _neighbourhood(self, u: int, reach: int) -> list[int]:
        """u and the chain vertices up to `reach` steps away along its chain."""
        out = [u]
        ci = self.vchain[u]
        for side in (self.vprev, self.vnext):
            x = side[u]
            for _ in range(reach):
                if x < 0 or self.vchain[x] != ci:
                    break
                out.append(x)
                x = side[x]
        return out

    def _push(self, heap: list, version: list[int], x: int) -> None:
        got = self.collapse_gain(x)
        if got is not None and got[0] < 0:
            heapq.heappush(heap, (got[0], version[x], x, got[1]))

    def simplify(self, max_run: int = 3) -> int:
        """Greedy collapses (best energy gain first) while one lowers the energy; returns the count."""
        heap: list[tuple[float, int, int, int]] = []
        version = [0] * len(self.px)
        for u in range(len(self.px)):
            got = self.collapse_gain(u, max_run)
            if got is not None and got[0] < 0:
                heap.append((got[0], 0, u, got[1]))
        heapq.heapify(heap)
        done = 0
        while heap:
            _, ver, u, k = heapq.heappop(heap)
            if ver != version[u] or self.vchain[u] < 0:
                continue
            touched = self._neighbourhood(u, k + 3)
            x = u
            removed = 0
            for _ in range(k):
                a, b = self.vprev[x], self.vnext[x]
                if not (self.try_collapse(x, b) or self.try_collapse(x, a)):
                    break
                self._remove_from_chain(x)
                removed += 1
                x = b
            if removed == 0:
                continue  # blocked by the mesh: retried only once a neighbour changes
            done += removed
            for x in touched:
                if self.vchain[x] < 0:
                    continue
                version[x] += 1
                self._push(heap, version, x)
        return done

    def _independent(self, cands: list[int]) -> tuple[list[int], list[int]]:
        """Split cands into vertices that can move together (no shared triangle, 2 apart on chains)."""
        blocked: set[int] = set()
        chosen: list[int] = []
        rest: list[int] = []
        for u in cands:
            if u in blocked:
                rest.append(u)
                continue
            chosen.append(u)
            for t in self.vt[u]:
                blocked.update(self.tri[t])
            for side in (self.vprev, self.vnext):
                x = side[u]
                blocked.add(x)
                if self.vchain[x] == self.vchain[u]:
                    blocked.add(side[x])
        return chosen, rest

    def _irr_batch(self, prev: np.ndarray, mid: np.ndarray, nxt: np.ndarray, cand: np.ndarray,
                   moved: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """Deviation at vertex mid (turn prev->mid->nxt) for each candidate position of `moved`.

        prev/mid/nxt: (m,) vertex ids; cand: (m, K, 2); xy: all current positions.
        """
        pts = []
        for v in (prev, mid, nxt):
            p = np.broadcast_to(xy[v][:, None, :], cand.shape).copy()
            is_moved = v == moved
            p[is_moved] = cand[is_moved]
            pts.append(p)
        (ax, ay), (bx, by), (cx, cy) = ((p[..., 0], p[..., 1]) for p in pts)
        ux, uy, vx, vy = bx - ax, by - ay, cx - bx, cy - by
        q = np.arctan2(ux * vy - uy * vx, ux * vx + uy * vy) / _HALF_PI
        dev = np.abs(q - np.round(q)) * _HALF_PI
        degenerate = ((ux == 0) & (uy == 0)) | ((vx == 0) & (vy == 0))
        return np.where(degenerate, 0.0, dev) * np.minimum(np.hypot(ux, uy), np.hypot(vx, vy))

    def _relocate_batch(self, group: list[int], step: float) -> list[int]:
        """Move each vertex of an independent group to its best of 9 nearby positions."""
        u = np.asarray(group, np.int64)
        m = len(u)
        xy = np.column_stack([self.px, self.py])
        vchain = np.asarray(self.vchain, np.int64)
        vprev = np.asarray(self.vprev, np.int64)
        vnext = np.asarray(self.vnext, np.int64)
        vfixed = np.asarray(self.vfixed, bool)
        dirs = step * np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [-1, -1], [1, -1], [-1, 1.0]])
        k = len(dirs)
        cand = xy[u][:, None, :] + dirs[None]
        ci = vchain[u]
        a, b = vprev[u], vnext[u]
        r1 = np.array([self._path_range(int(x), int(y), int(c)) for x, y, c in zip(a, u, ci)]).reshape(-1, 2)
        r2 = np.array([self._path_range(int(x), int(y), int(c)) for x, y, c in zip(u, b, ci)]).reshape(-1, 2)
        rep = np.repeat
        cx, cy = cand[..., 0].ravel(), cand[..., 1].ravel()
        e1 = _lobe_areas(rep(xy[a, 0], k), rep(xy[a, 1], k), cx, cy, self.G, rep(r1[:, 0], k), rep(r1[:, 1], k))
        e2 = _lobe_areas(cx, cy, rep(xy[b, 0], k), rep(xy[b, 1], k), self.G, rep(r2[:, 0], k), rep(r2[:, 1], k))
        energy = (e1 + e2).reshape(m, k)
        if self.angle_cost > 0:
            regular = np.array([self.chains[c].regular for c in ci.tolist()], bool)
            irr = self._irr_batch(a, u, b, cand, u, xy)
            for end, far in ((a, vprev[a]), (b, vnext[b])):
                on = (vchain[end] == ci) & ~vfixed[end]
                if end is a:
                    d = self._irr_batch(far, end, u, cand, u, xy)
                else:
                    d = self._irr_batch(u, end, far, cand, u, xy)
                irr += np.where(on[:, None], d, 0.0)
            energy += self.angle_cost * np.where(regular[:, None], irr, 0.0)
        # validity: every triangle around u keeps a positive area
        owner, oj, ok = [], [], []
        for i, v in enumerate(group):
            for t in self.vt[v]:
                tri = self.tri[t]
                r = tri.index(v)
                owner.append(i)
                oj.append(tri[(r + 1) % 3])
                ok.append(tri[(r + 2) % 3])
        owner_a = np.asarray(owner, np.int64)
        pj, pk = xy[np.asarray(oj, np.int64)], xy[np.asarray(ok, np.int64)]
        c = cand[owner_a]
        cross = ((pj[:, None, 0] - c[..., 0]) * (pk[:, None, 1] - c[..., 1])
                 - (pj[:, None, 1] - c[..., 1]) * (pk[:, None, 0] - c[..., 0]))
        worst = np.full((m, k), np.inf)
        np.minimum.at(worst, owner_a, cross)
        energy[worst <= _EPS_AREA] = np.inf
        best = np.argmin(energy, axis=1)
        gain = energy[np.arange(m), best] < energy[:, 0] - 1e-9
        moved = []
        for i in np.flatnonzero(gain).tolist():
            v = group[i]
            self.px[v], self.py[v] = float(cand[i, best[i], 0]), float(cand[i, best[i], 1])
            self.edge_err.pop((self.vprev[v], v), None)
            self.edge_err.pop((v, self.vnext[v]), None)
            moved.append(v)
        return moved

    def relocate(self, steps: Sequence[float] = (0.5, 0.25, 0.125, 0.0625), sweeps: int = 2) -> int:
        """Move free boundary vertices to lower the energy (vectorised pattern search)."""
        free = [u for u in range(len(self.px)) if self.vchain[u] >= 0 and not self.vfixed[u]]
        moved: set[int] = set()
        for step in steps:
            for _ in range(sweeps):
                todo = free
                while todo:
                    group, todo = self._independent(todo)
                    moved.update(self._relocate_batch(group, step))
        return len(moved)

    def optimise(self, rounds: int = 2, continuation: bool = True) -> None:
        """Collapse greedily on fidelity + complexity, then add regularity: relocate and collapse.

        The staircase of the fine mesh has only right angles, so the regularity term is
        switched on after the first simplification (a continuation that keeps it from
        pinning the mesh to the pixel steps).
        """
        angle_cost = self.angle_cost
        if continuation:
            self.angle_cost = 0.0
        self.simplify()
        self.angle_cost = angle_cost
        for _ in range(rounds):
            moved = self.relocate()
            done = self.simplify()
            if moved == 0 and done == 0:
                break

    # ---- checks and output
    def triangles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vertices (n,2), alive triangles (m,3), their region ids)."""
        alive = [t for t, ok in enumerate(self.talive) if ok]
        tri = np.asarray([self.tri[t] for t in alive], np.int64).reshape(-1, 3)
        lab = np.asarray([self.tlab[t] for t in alive], np.int64)
        return np.column_stack([self.px, self.py]), tri, lab

    def min_signed_area(self) -> float:
        """Smallest doubled signed triangle area (positive = no flipped triangle)."""
        pts, tri, _ = self.triangles()
        a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
        cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        return float(cross.min())

    def region_polygons(self) -> dict[int, shapely.Geometry]:
        """Polygon (pixel coordinates) of every region, the union of its triangles."""
        pts, tri, lab = self.triangles()
        order = np.argsort(lab, kind="stable")
        lab, tri = lab[order], tri[order]
        polys = shapely.polygons(pts[tri])
        cuts = np.flatnonzero(np.diff(lab)) + 1
        out: dict[int, shapely.Geometry] = {}
        for group, region in zip(np.split(polys, cuts), lab[np.r_[0, cuts]].tolist()):
            out[int(region)] = shapely.coverage_union_all(group)
        return out


# --------------------------------------------------------------------------- polygoniser


def _fill_nodata_specks(labels: np.ndarray, max_pixels: int) -> np.ndarray:
    """Give nodata specks (<= max_pixels, not on the block border) the nearest known class.

    Nodata is not a class to approximate: a speck of missing imagery inside a building
    would otherwise stay a hole that the mesh must keep (regions never vanish).
    """
    nodata = labels == IGNORE
    if not nodata.any() or nodata.all() or max_pixels < 1:
        return labels
    comp, n = ndimage.label(nodata)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    small = sizes <= max_pixels
    small[0] = False
    small[border] = False
    fill = small[comp]
    if not fill.any():
        return labels
    _, (rows, cols) = ndimage.distance_transform_edt(nodata, return_indices=True)
    out = labels.copy()
    out[fill] = labels[rows[fill], cols[fill]]
    return out


def _block_polygons(
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    instances: np.ndarray | None,
    lam_px: float,
    mu_px: float,
    skip: set[int],
    regular_classes: set[int],
) -> list[tuple[int, float, float, shapely.Geometry]]:
    """(class, confidence, pixel count, polygon in block pixel coordinates) per object of a block."""
    if np.isin(labels, list(skip)).all():
        return []  # nothing to polygonise in this block
    labels = _fill_nodata_specks(labels, max_pixels=int(4 * lam_px * lam_px))
    regions, region_class = _regions(labels, instances)
    mesh = LabelMesh(regions, region_class, lam_px, mu_px, regular_classes)
    mesh.optimise()
    counts = np.bincount(regions.ravel(), minlength=len(region_class))
    conf = np.full(len(region_class), np.nan)
    if probabilities is not None:
        for cls in np.unique(region_class).tolist():
            if cls in skip or cls >= probabilities.shape[0]:
                continue
            sums = np.bincount(regions.ravel(), weights=probabilities[cls].ravel().astype(np.float64),
                               minlength=len(region_class))
            ids = np.flatnonzero(region_class == cls)
            conf[ids] = sums[ids] / np.maximum(counts[ids], 1)
    out = []
    for region, geom in mesh.region_polygons().items():
        cls = int(region_class[region])
        if cls in skip:
            continue
        for part in getattr(geom, "geoms", [geom]):
            out.append((cls, float(conf[region]), float(counts[region]), part))
    return out


def _block_polygons_args(args: tuple) -> list[tuple[int, float, float, shapely.Geometry]]:
    return _block_polygons(*args)


def _merge_seams(pieces: list[tuple[int, float, float, shapely.Geometry]], seam_lines: list[shapely.Geometry]):
    """Union the pieces of one object cut by block seams (they share an exact edge)."""
    if not seam_lines or len(pieces) < 2:
        return pieces
    geoms = np.array([p[3] for p in pieces], dtype=object)
    seams = shapely.union_all(seam_lines)
    on_seam = np.flatnonzero(shapely.intersects(geoms, seams) & ~shapely.touches(geoms, seams) |
                             shapely.intersects(shapely.boundary(geoms), seams))
    if len(on_seam) < 2:
        return pieces
    from geolabel.vectorize.polygons import edge_sharing_groups

    candidates = geoms[on_seam]
    groups = [[int(on_seam[i]) for i in group] for group in edge_sharing_groups(candidates, [pieces[k][0] for k in on_seam])]
    merged = [p for k, p in enumerate(pieces) if k not in set(on_seam.tolist())]
    for members in groups:
        if len(members) == 1:
            merged.append(pieces[members[0]])
            continue
        geom = shapely.union_all([pieces[m][3] for m in members])
        geom = shapely.simplify(geom, 0.0)  # drop the collinear seam vertices
        count = sum(pieces[m][2] for m in members)
        confs = [(pieces[m][1], pieces[m][2]) for m in members]
        conf = sum(c * n for c, n in confs) / count if not any(math.isnan(c) for c, _ in confs) else math.nan
        for part in getattr(geom, "geoms", [geom]):
            merged.append((pieces[members[0]][0], conf, count, part))
    return merged


def mesh_polygons(
    classes: np.ndarray,
    transform: Affine,
    crs=None,
    probabilities: np.ndarray | None = None,
    *,
    class_map: ClassMap | None = None,
    lam: float = DEFAULT_LAMBDA,
    mu: float = DEFAULT_MU,
    block_size: int = DEFAULT_BLOCK,
    min_area: float = 0.0,
    instances: np.ndarray | None = None,
    regular_classes: Sequence[int] | None = None,
    background: int = 0,
    workers: int = 1,
) -> gpd.GeoDataFrame:
    """Polygons of a class raster by mesh approximation with right-angle regularity.

    Args:
        classes: (h, w) or (1, h, w) integer class raster; `background` and IGNORE (255)
            are not polygonised.
        transform: affine map pixel (col, row) -> CRS coordinates.
        crs: CRS of the output.
        probabilities: optional (num_classes, h, w) probabilities for the confidence column.
        class_map: class names for the `class` column (default: ids as they are).
        lam: complexity weight lambda, ground metres: a vertex must save lambda^2 of
            mislabelled area to be kept.
        mu: right-angle regularity weight mu, ground metres: a corner costs mu x its
            shorter edge x its deviation from a multiple of 90 degrees (radians).
        block_size: blocks of this many pixels are meshed independently, seams merged.
        min_area: drop polygons smaller than this many square metres.
        instances: optional (h, w) instance ids, so touching objects of one class
            (terraced houses) stay separate polygons with one shared wall.
        regular_classes: classes pulled to right angles (default: the class named
            "building", or class 1).
        background: the class id that is not polygonised.
        workers: processes meshing blocks in parallel (blocks are independent).

    Returns:
        GeoDataFrame with columns class (name), area (ground m^2), confidence (mean
        probability of the class, NaN without probabilities), geometry (source CRS).
    """
    arr = np.asarray(classes)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError("classes", f"expected an integer (h, w) class raster, got {arr.dtype} {arr.shape}")
    if probabilities is not None and tuple(probabilities.shape[-2:]) != arr.shape:
        raise InputError("probabilities", f"shape {probabilities.shape} does not match classes {arr.shape}")
    if instances is not None and tuple(instances.shape) != arr.shape:
        raise InputError("instances", f"shape {instances.shape} does not match classes {arr.shape}")
    if lam < 0 or mu < 0:
        raise InputError("lam/mu", "must be >= 0 metres")
    if block_size < 16:
        raise InputError("block_size", "must be at least 16 pixels")
    if workers < 1:
        raise InputError("workers", "must be >= 1")
    if probabilities is not None and probabilities.dtype == np.uint8:
        probabilities = probabilities.astype(np.float32) / 255.0
    h, w = arr.shape
    mx, my = ground_pixel_size(transform, crs, w, h)
    pixel = math.sqrt(mx * my)
    if regular_classes is None:
        regular = {class_map.names.index("building")} if class_map and "building" in class_map.names else {1}
    else:
        regular = set(int(c) for c in regular_classes)
    skip = {int(background), IGNORE}
    pieces: list[tuple[int, float, float, shapely.Geometry]] = []
    seams: list[shapely.Geometry] = []
    windows = [(r, c) for r in range(0, h, block_size) for c in range(0, w, block_size)]
    def jobs():
        for r0, c0 in windows:
            r1, c1 = min(r0 + block_size, h), min(c0 + block_size, w)
            probs = None if probabilities is None else probabilities[:, r0:r1, c0:c1]
            inst = None if instances is None else instances[r0:r1, c0:c1]
            yield arr[r0:r1, c0:c1], probs, inst, lam / pixel, mu / pixel, skip, regular

    if workers > 1 and len(windows) > 1:
        # forkserver: never fork a parent that may hold TensorFlow's threads
        pool = ProcessPoolExecutor(max_workers=min(workers, len(windows)),
                                   mp_context=multiprocessing.get_context("forkserver"))
        results = pool.map(_block_polygons_args, jobs())
    else:
        pool = None
        results = map(_block_polygons_args, jobs())
    try:
        for (r0, c0), block in zip(windows, progress(results, desc="mesh polygons", total=len(windows), unit="block")):
            for cls, conf, count, geom in block:
                pieces.append((cls, conf, count, shapely.transform(geom, lambda p, dx=c0, dy=r0: p + (dx, dy))))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for r in range(block_size, h, block_size):
        seams.append(shapely.LineString([(0, r), (w, r)]))
    for c in range(block_size, w, block_size):
        seams.append(shapely.LineString([(c, 0), (c, h)]))
    pieces = _merge_seams(pieces, seams)
    geoms = np.array([p[3] for p in pieces], dtype=object)
    if len(geoms):
        a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
        geoms = shapely.transform(geoms, lambda p: np.column_stack([a * p[:, 0] + b * p[:, 1] + c,
                                                                   d * p[:, 0] + e * p[:, 1] + f]))
        if transform.a * transform.e - transform.b * transform.d < 0:
            geoms = shapely.orient_polygons(geoms) if hasattr(shapely, "orient_polygons") else geoms
    names = [class_map.names[p[0]] if class_map and p[0] < class_map.num_classes else str(p[0]) for p in pieces]
    areas = np.array([shapely.area(p[3]) * mx * my for p in pieces], float)  # pixel area -> ground m^2
    frame = gpd.GeoDataFrame(
        {"class": np.asarray(names, dtype=object), "area": areas,
         "confidence": np.asarray([p[1] for p in pieces], float)},
        geometry=gpd.GeoSeries(list(geoms), crs=crs),
        crs=crs,
    )
    if min_area > 0:
        frame = frame[frame["area"] >= min_area].reset_index(drop=True)
    logger.info("mesh polygons: %d objects, %d vertices", len(frame), vertex_count(frame.geometry))
    return frame


def ground_pixel_size(transform: Affine, crs, width: int, height: int) -> tuple[float, float]:
    """Ground metres per pixel (x, y) at the raster centre; CRS units as metres without a CRS."""
    sx = math.hypot(transform.a, transform.d)
    sy = math.hypot(transform.b, transform.e)
    if crs is None:
        return sx, sy
    from pyproj import CRS, Geod, Transformer

    crs = CRS.from_user_input(crs)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    geod = Geod(ellps="WGS84")
    cx, cy = width / 2, height / 2
    lon0, lat0 = to_ll.transform(*(transform * (cx, cy)))
    out = []
    for dx, dy in ((1.0, 0.0), (0.0, 1.0)):
        lon1, lat1 = to_ll.transform(*(transform * (cx + dx, cy + dy)))
        out.append(geod.inv(lon0, lat0, lon1, lat1)[2])
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError("transform", f"cannot measure the ground size of a pixel in {crs.to_string()}")
    if crs.is_projected:  # conformal metric grids (UTM...) keep their own units, as the other polygonisers do
        unit = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0
        if abs(out[0] / (sx * unit) - 1) < 0.01 and abs(out[1] / (sy * unit) - 1) < 0.01:
            return sx * unit, sy * unit
    return out[0], out[1]


def vertex_count(geoms) -> int:
    """Total number of distinct vertices of polygon rings (closing points not counted)."""
    arr = np.asarray(list(geoms), dtype=object)
    if len(arr) == 0:
        return 0
    rings = shapely.get_num_coordinates(arr) - shapely.get_num_interior_rings(arr) - shapely.get_num_geometries(arr)
    return int(np.sum(rings))

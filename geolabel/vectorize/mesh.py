"""Polygonisation by mesh approximation with right-angle regularity (Tasar et al., IGARSS 2018).

The label map is approximated by a labelled planar mesh whose energy

    E = fidelity + lambda^2 * (vertex count) + mu * (right-angle irregularity)

is minimised, then each labelled region of the mesh becomes a polygon.

* Fine mesh: the region boundaries as a planar straight-line graph. Its vertices are
  the pixel corners where boundaries turn or meet; chains of vertices run from
  junction to junction (or round a closed loop) and each is shared by the two regions
  it separates, so the graph reproduces the label map exactly and neighbouring
  regions always share one boundary.
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
* Operators: half-edge collapse of runs of up to three vertices along a chain (greedy,
  best energy gain first) and continuous relocation of chain vertices (pattern search).
  The paper keeps a triangulation to reject operations that would fold the mesh; here
  the same guarantee is checked on the boundary graph itself: no vertex may lie in the
  area an operation sweeps, no edge may cross the path of a moved vertex, and no
  region may be reduced to a line, so the result has no self-intersections and no
  region vanishes.
* Speed: everything is vectorised with numpy. Operations that cannot see each other
  are made together, in rounds: a collapse when its gain is the best within four
  vertices along its chain (ties broken in a fixed pseudo-random order), relocations
  of vertices three apart on a chain. Boundary paths keep only their turning corners
  (a straight run adds nothing to the fidelity integral), and a vertex is evaluated
  again for relocation only after something near it changed.
* Large rasters are processed block by block (optionally in parallel processes);
  vertices on block borders are fixed at pixel corners, so the pieces of an object
  cut by a seam meet exactly and are merged back into one polygon.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from scipy import ndimage

from geolabel.classes import IGNORE, ClassMap, building_class
from geolabel.errors import InputError
from geolabel.progress import logger, progress
from geolabel.data.raster import ground_pixel_size
from geolabel.vectorize.polygons import DEFAULT_BLOCK, vertex_count
from geolabel.vectorize.separate import separate_buildings

DEFAULT_LAMBDA = 0.5
"""Default complexity weight, metres: a vertex must save lambda^2 of mislabelled area."""
DEFAULT_MU = 0.5
"""Default right-angle regularity weight, metres (per metre of edge and radian of deviation)."""
AUTO_PARALLEL_PIXELS = 8_000_000
"""With workers=None, rasters of this many pixels or more are meshed by one process per core."""

_HALF_PI = math.pi / 2
_EPS_AREA = 1e-6  # smallest accepted doubled triangle area, px^2


# --------------------------------------------------------------------------- regions


def _regions(labels: np.ndarray, instances: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """4-connected regions of equal (class, instance): (region id map, class of each region)."""
    labels = np.asarray(labels)
    if instances is None:
        key = labels
        if labels.dtype.kind in "ui" and labels.size and 0 <= labels.min() and labels.max() < 1 << 16:
            values = np.flatnonzero(np.bincount(labels.ravel()))
        else:
            values = np.unique(labels)
        value_class = values
    else:
        scale = int(instances.max()) + 1
        uniq, key = np.unique(labels.astype(np.int64) * scale + instances.astype(np.int64), return_inverse=True)
        key = key.reshape(labels.shape)
        values = np.arange(len(uniq))
        value_class = uniq // scale
    regions = np.zeros(labels.shape, np.int64)
    region_class: list[int] = []
    offset = 0
    for value, cls in zip(values.tolist(), value_class.tolist()):
        comp, n = ndimage.label(key == value)
        inside = comp > 0
        regions[inside] = comp[inside] + (offset - 1)
        region_class.extend([int(cls)] * n)
        offset += n
    return regions, np.asarray(region_class, np.int64)


# --------------------------------------------------------------------------- geometry kernels


def _lobe_areas(ox: np.ndarray, oy: np.ndarray, tx: np.ndarray, ty: np.ndarray, coords: np.ndarray,
                first: np.ndarray, last: np.ndarray, fixed_start: bool | np.ndarray = True) -> np.ndarray:
    """Area between each segment o-t and the polyline o, coords[first..last], t.

    Integrated along o-t as sum |v| |du| (v: signed distance to the line o-t, u: the
    position along it), exact for every polyline that advances along o-t and an upper
    bound for one that folds back. The pixel paths hold only the corners where the
    boundary turns: splitting a straight piece does not change the integral, so the
    result is the one of the full pixel path.

    o and t are (m,) or (m, K): K variants of one end of edge i (the other end is the
    same for all K; `fixed_start`, one flag or one per edge, says which), evaluated
    against the path gathered once.
    A zero-length segment gives the area of the closed polyline for K = 1, inf otherwise.
    """
    ox, oy, tx, ty = (np.asarray(z, np.float64) for z in (ox, oy, tx, ty))
    flat = ox.ndim == 1
    if flat:
        ox, oy, tx, ty = ox[:, None], oy[:, None], tx[:, None], ty[:, None]
    m = max(ox.shape[0], tx.shape[0])
    K = max(ox.shape[1], tx.shape[1])
    if m == 0:
        return np.zeros(0) if flat else np.zeros((0, K))
    dx, dy = tx - ox, ty - oy
    length = np.hypot(dx, dy)
    safe = np.where(length > 1e-9, length, 1.0)
    ex, ey = dx / safe, dy / safe
    if np.ndim(fixed_start) == 0:
        qx, qy = (ox[:, 0], oy[:, 0]) if fixed_start else (tx[:, 0], ty[:, 0])
    else:
        qx = np.where(fixed_start, ox[:, 0], tx[:, 0])  # the fixed end: on the line of every variant
        qy = np.where(fixed_start, oy[:, 0], ty[:, 0])
    size = last - first + 1
    ends = np.cumsum(size)
    starts = ends - size
    total = int(ends[-1])
    rows = np.arange(total) + np.repeat(first - starts, size)
    px, py = coords[rows, 0], coords[rows, 1]
    rx = (px - np.repeat(qx, size))[:, None]
    ry = (py - np.repeat(qy, size))[:, None]
    exo, eyo = np.repeat(ex, size, axis=0), np.repeat(ey, size, axis=0)
    v = ry * exo
    v -= rx * eyo  # signed distance of every path point to the line
    # pieces between consecutive path points: |du| (|v0| + |v1|) / 2 where v keeps its sign,
    # |du| (v0^2 + v1^2) / (2 |v0 - v1|) = |du| (|v0| + |v1| - 2 |v0 v1| / (|v0| + |v1|)) / 2 where not
    du = (px[1:] - px[:-1])[:, None] * exo[:-1]
    du += (py[1:] - py[:-1])[:, None] * eyo[:-1]
    np.abs(du, out=du)
    av = np.abs(v)
    full = np.empty((total, K))  # twice the piece between path points r and r + 1 in row r
    piece = full[:-1]
    np.add(av[:-1], av[1:], out=piece)
    cross = v[:-1] * v[1:]
    np.minimum(cross, 0.0, out=cross)  # -|v0 v1| where v changes sign, 0 elsewhere
    np.divide(cross, piece, out=cross, where=cross < 0)
    cross *= 2.0
    piece += cross
    piece *= du
    full[ends - 1] = 0.0  # across two edges (and the last row)
    area = np.add.reduceat(full, starts, axis=0)
    # from o (u = v = 0) to the first path point, and from the last one to t (u = L, v = 0)
    fx, fy = px[starts][:, None] - ox, py[starts][:, None] - oy
    lx, ly = px[ends - 1][:, None] - ox, py[ends - 1][:, None] - oy
    area += av[starts] * np.abs(fx * ex + fy * ey)
    area += av[ends - 1] * np.abs(length - (lx * ex + ly * ey))
    area *= 0.5
    short = length <= 1e-9
    if short.any():
        if K == 1:  # a closed path: its own area (shoelace)
            shoe = np.zeros(total)
            shoe[:-1] = px[:-1] * py[1:] - px[1:] * py[:-1]
            o0, o1 = ox[:, 0], oy[:, 0]
            shoe[ends - 1] = 0.0
            closed = np.add.reduceat(shoe, starts)
            closed += o0 * py[starts] - px[starts] * o1 + px[ends - 1] * o1 - o0 * py[ends - 1]
            closed = np.abs(closed) * 0.5
            area[:, 0] = np.where(short[:, 0], closed, area[:, 0])
        else:
            area[short] = np.inf
    return area[:, 0] if flat else area


def _deviations(ax, ay, bx, by, cx, cy) -> np.ndarray:
    """Right-angle irregularity of the turns a->b->c: deviation (radians) of the turn from
    the nearest multiple of 90 degrees times the shorter of the two edges."""
    ux, uy, vx, vy = bx - ax, by - ay, cx - bx, cy - by
    q = np.arctan2(ux * vy - uy * vx, ux * vx + uy * vy) / _HALF_PI
    dev = np.abs(q - np.round(q)) * _HALF_PI
    lu, lv = np.hypot(ux, uy), np.hypot(vx, vy)
    return np.where((lu == 0) | (lv == 0), 0.0, dev * np.minimum(lu, lv))


def _cross(ax, ay, bx, by, cx, cy):
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def _in_triangle(ax, ay, bx, by, cx, cy, qx, qy, eps: float = _EPS_AREA) -> np.ndarray:
    """Whether q lies in the closed triangle a, b, c (or on the segment hull of a degenerate one)."""
    d1 = _cross(ax, ay, bx, by, qx, qy)
    d2 = _cross(bx, by, cx, cy, qx, qy)
    d3 = _cross(cx, cy, ax, ay, qx, qy)
    side = ((d1 >= -eps) & (d2 >= -eps) & (d3 >= -eps)) | ((d1 <= eps) & (d2 <= eps) & (d3 <= eps))
    tol = 1e-9
    box = ((qx >= np.minimum(np.minimum(ax, bx), cx) - tol) & (qx <= np.maximum(np.maximum(ax, bx), cx) + tol)
           & (qy >= np.minimum(np.minimum(ay, by), cy) - tol) & (qy <= np.maximum(np.maximum(ay, by), cy) + tol))
    return side & box


def _segments_meet(ax, ay, bx, by, cx, cy, dx, dy, eps: float = _EPS_AREA) -> np.ndarray:
    """Whether the closed segments a-b and c-d intersect (touching counts)."""
    d1 = _cross(ax, ay, bx, by, cx, cy)
    d2 = _cross(ax, ay, bx, by, dx, dy)
    d3 = _cross(cx, cy, dx, dy, ax, ay)
    d4 = _cross(cx, cy, dx, dy, bx, by)
    proper = (((d1 > eps) & (d2 < -eps)) | ((d1 < -eps) & (d2 > eps))) & \
             (((d3 > eps) & (d4 < -eps)) | ((d3 < -eps) & (d4 > eps)))

    def on(px, py, qx, qy, rx, ry, d):  # r on segment p-q (given collinear-ish)
        tol = 1e-9
        return (np.abs(d) <= eps) & (rx >= np.minimum(px, qx) - tol) & (rx <= np.maximum(px, qx) + tol) \
            & (ry >= np.minimum(py, qy) - tol) & (ry <= np.maximum(py, qy) + tol)

    return proper | on(ax, ay, bx, by, cx, cy, d1) | on(ax, ay, bx, by, dx, dy, d2) \
        | on(cx, cy, dx, dy, ax, ay, d3) | on(cx, cy, dx, dy, bx, by, d4)


class _Grid:
    """Items bucketed in square cells by their bounding boxes (grown by `margin`), for
    finding the items near many query boxes at once."""

    _OFFSET = 8.0  # coordinates may be a little negative (moved vertices); cells start there

    def __init__(self, x0, y0, x1, y1, cell: float, margin: float = 0.0):
        self.cell = float(cell)
        cx0, cy0 = self._cells(np.asarray(x0) - margin, np.asarray(y0) - margin)
        cx1, cy1 = self._cells(np.asarray(x1) + margin, np.asarray(y1) + margin)
        self.ncols = int(cx1.max(initial=0)) + 1
        self.nrows = int(cy1.max(initial=0)) + 1
        keys, items = self._expand(cx0, cy0, cx1, cy1)
        order = np.argsort(keys, kind="stable")
        self.items = items[order]
        # start of each cell's items
        self.cell_start = np.searchsorted(keys[order], np.arange(self.ncols * self.nrows + 1))

    def _cells(self, x, y):
        cx = ((x + self._OFFSET) * (1.0 / self.cell)).astype(np.int64)
        cy = ((y + self._OFFSET) * (1.0 / self.cell)).astype(np.int64)
        return np.maximum(cx, 0, out=cx), np.maximum(cy, 0, out=cy)

    def _expand(self, cx0, cy0, cx1, cy1):
        nx = cx1 - cx0 + 1
        ny = cy1 - cy0 + 1
        counts = nx * ny
        single = bool((counts == 1).all())
        if single:
            return cy0 * self.ncols + cx0, np.arange(len(cx0))
        total = int(counts.sum())
        item = np.repeat(np.arange(len(cx0)), counts)
        local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        width = nx[item]
        cx = cx0[item] + local % width
        cy = cy0[item] + local // width
        return cy * self.ncols + cx, item

    def query(self, x0, y0, x1, y1) -> tuple[np.ndarray, np.ndarray]:
        """(query index, item) for every item sharing a cell with a query box (may repeat)."""
        cx0, cy0 = self._cells(np.asarray(x0, np.float64), np.asarray(y0, np.float64))
        cx1, cy1 = self._cells(np.asarray(x1, np.float64), np.asarray(y1, np.float64))
        np.minimum(cx1, self.ncols - 1, out=cx1)
        np.minimum(cy1, self.nrows - 1, out=cy1)
        inside = (cx0 <= cx1) & (cy0 <= cy1)
        q_ids = np.flatnonzero(inside)
        if len(q_ids) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys, q = self._expand(cx0[q_ids], cy0[q_ids], cx1[q_ids], cy1[q_ids])
        lo = self.cell_start[keys]
        n = self.cell_start[keys + 1] - lo
        total = int(n.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        qq = np.repeat(q_ids[q], n)
        pos = np.arange(total) + np.repeat(lo - (np.cumsum(n) - n), n)
        return qq, self.items[pos]


def _cell_size(n: int, width: float, height: float) -> float:
    """Grid cell side for n items spread over width x height: about two items a cell."""
    return float(min(max(math.sqrt(2.0 * max(width * height, 1.0) / max(n, 1)), 4.0), 64.0))


# --------------------------------------------------------------------------- the boundary mesh

_DX = np.array([1, 0, -1, 0])  # direction d -> step (x = col, y = row); left of d is (d + 1) % 4
_DY = np.array([0, 1, 0, -1])


class LabelMesh:
    """The planar partition of a region map, simplified by collapse and relocation.

    The region boundaries form a planar straight-line graph: chains of vertices from
    junction to junction (or closed loops), each shared by the two regions it separates.
    Its vertices start at every pixel corner where a boundary turns, so the graph
    reproduces the label map exactly; the energy is then minimised by half-edge collapses
    along chains and by relocating chain vertices. Every operation is checked geometrically
    (no vertex in the area it sweeps, no edge crossing the path of a moved vertex, no
    region reduced to a line), so the partition stays valid: no self-intersections, no
    vanished region, and neighbouring regions share one boundary.

    Independent operations are done together, in rounds: a collapse is made when its
    energy gain is the best within `_REACH` vertices along its chain (ties broken by a
    fixed pseudo-random order), which is the order of the sequential greedy wherever
    gains do not change in between; vertices three apart on a chain relocate together.

    Args:
        regions: (h, w) region ids (0..R-1), 4-connected.
        region_class: class id of each region.
        lam_px: complexity weight in pixels (lambda / pixel size).
        mu_px: regularity weight in pixels (mu / pixel size).
        regular_classes: classes whose outlines are pulled towards right angles.
    """

    # Collapses chosen together are more than _REACH vertices apart on a chain: a run of k at u
    # changes the gains of u-4..u-1 and of the two vertices after the run, and the gain at w
    # reads w-2..w+4, so two runs 5 apart neither see nor change each other.
    _REACH = 4

    def __init__(
        self,
        regions: np.ndarray,
        region_class: np.ndarray,
        lam_px: float,
        mu_px: float,
        regular_classes: set[int],
    ):
        self.regions = regions
        self.region_class = np.asarray(region_class, np.int64)
        self.vertex_cost = lam_px * lam_px
        self.angle_cost = mu_px
        self.regular_classes = set(int(c) for c in regular_classes)
        self._build()

    # ---- construction
    def _build(self) -> None:
        regions = self.regions
        h, w = regions.shape
        self.shape = (h, w)
        pad = np.full((h + 2, w + 2), -1, np.int64)
        pad[1:-1, 1:-1] = regions
        vert = pad[1:-1, :-1] != pad[1:-1, 1:]  # (h, w+1): edge corner (r,c)-(r+1,c)
        horz = pad[:-1, 1:-1] != pad[1:, 1:-1]  # (h+1, w): edge corner (r,c)-(r,c+1)
        vdown = pad[1:-1, :-1] < pad[1:-1, 1:]  # directed +y: the smaller region on its left
        hright = pad[1:, 1:-1] < pad[:-1, 1:-1]  # directed +x
        H = np.zeros((h + 1, w + 2), bool)
        H[:, 1:-1] = horz
        HR = np.zeros((h + 1, w + 2), bool)
        HR[:, 1:-1] = hright
        V = np.zeros((h + 2, w + 1), bool)
        V[1:-1, :] = vert
        VD = np.zeros((h + 2, w + 1), bool)
        VD[1:-1, :] = vdown
        has = [H[:, 1:], V[1:, :], H[:, :-1], V[:-1, :]]  # per corner: an edge in direction d
        out = [H[:, 1:] & HR[:, 1:], V[1:, :] & VD[1:, :], H[:, :-1] & ~HR[:, :-1], V[:-1, :] & ~VD[:-1, :]]
        deg = has[0].astype(np.int8) + has[1] + has[2] + has[3]
        straight = (deg == 2) & ((has[0] & has[2]) | (has[1] & has[3]))
        node = (deg >= 2) & ~straight
        W1 = w + 1
        nk = np.flatnonzero(node.ravel())  # corner index of each node (row-major)
        n = len(nk)
        nx, ny = nk % W1, nk // W1
        nodeid = np.full((h + 1) * W1, -1, np.int64)
        nodeid[nk] = np.arange(n)
        hasn = [hd.ravel()[nk] for hd in has]
        outn = [od.ravel()[nk] for od in out]
        junction = deg.ravel()[nk] >= 3
        # out-edges: (source node, direction, target node) along the lattice lines
        kc = nx * (h + 1) + ny  # column-major key
        src_l, dir_l, dst_l = [], [], []
        for d in range(4):
            s = np.flatnonzero(outn[d])
            if d == 0:
                ref = nk[hasn[2]]
                t = ref[np.searchsorted(ref, nk[s], "right")]
                t = nodeid[t]
            elif d == 2:
                ref = nk[hasn[0]]
                t = nodeid[ref[np.searchsorted(ref, nk[s], "left") - 1]]
            elif d == 1:
                sel = np.flatnonzero(hasn[3])
                o = np.argsort(kc[sel])
                ref, ids = kc[sel][o], sel[o]
                t = ids[np.searchsorted(ref, kc[s], "right")]
            else:
                sel = np.flatnonzero(hasn[1])
                o = np.argsort(kc[sel])
                ref, ids = kc[sel][o], sel[o]
                t = ids[np.searchsorted(ref, kc[s], "left") - 1]
            src_l.append(s)
            dir_l.append(np.full(len(s), d, np.int64))
            dst_l.append(t)
        esrc = np.concatenate(src_l)
        edir = np.concatenate(dir_l)
        edst = np.concatenate(dst_l)
        # degree-2 nodes: one edge out, one in
        succ = np.full(n, -1, np.int64)
        sdir = np.full(n, -1, np.int64)
        two = ~junction[esrc]
        succ[esrc[two]] = edst[two]
        sdir[esrc[two]] = edir[two]
        pred = np.full(n, -1, np.int64)
        into = ~junction[edst]
        pred[edst[into]] = esrc[into]
        # rank the degree-2 nodes along their chains (pointer jumping); loops cut before their smallest node
        inner = np.flatnonzero(~junction)
        ar = np.arange(n)
        nxt2 = np.where(~junction & (succ >= 0), succ, -1)
        nxt2[nxt2 >= 0] = np.where(junction[nxt2[nxt2 >= 0]], -1, nxt2[nxt2 >= 0])
        steps = max(int(n).bit_length(), 1) + 1
        q = np.where(nxt2 >= 0, nxt2, ar)
        for _ in range(steps):
            q = q[q]
        on_loop = ~junction & (nxt2[q] >= 0)
        if on_loop.any():
            m = np.where(on_loop, ar, n)
            q = np.where(on_loop, nxt2, ar)
            for _ in range(steps):
                m = np.minimum(m, m[q])
                q = q[q]
            head = on_loop & (m == ar)
            nxt2[on_loop & (nxt2 >= 0) & head[np.maximum(nxt2, 0)]] = -1
        p = np.where(nxt2 >= 0, nxt2, ar)
        dist = (nxt2 >= 0).astype(np.int64)
        for _ in range(steps):
            dist = dist + dist[p]
            p = p[p]
        order = inner[np.lexsort((-dist[inner], p[inner]))]  # by chain (its last node), then along it
        tails = p[order]
        gstarts = np.r_[0, np.flatnonzero(np.diff(tails)) + 1] if len(order) else np.zeros(0, np.int64)
        glens = np.diff(np.r_[gstarts, len(order)])
        heads = order[gstarts]
        gtails = tails[gstarts]
        is_loop = on_loop[heads]
        elem_group = np.repeat(np.arange(len(glens)), glens)
        jj = junction[esrc] & junction[edst]  # chains without inner vertex: junction to junction
        n_direct = int(jj.sum())
        open_g = np.flatnonzero(~is_loop)
        loop_g = np.flatnonzero(is_loop)
        n_open = len(open_g)
        lens = np.concatenate([glens[open_g] + 2, np.full(n_direct, 2, np.int64), glens[loop_g]]).astype(np.int64)
        nch = len(lens)
        sstart = (np.cumsum(lens) - lens).astype(np.int64)
        total = int(lens.sum())
        snode = np.empty(total, np.int64)

        def fill(starts, counts, values):
            pos = np.repeat(starts, counts) + np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            snode[pos] = values

        o_start = sstart[:n_open]
        snode[o_start] = pred[heads[open_g]]
        snode[o_start + glens[open_g] + 1] = succ[gtails[open_g]]
        fill(o_start + 1, glens[open_g], order[~is_loop[elem_group]])
        d_start = sstart[n_open:n_open + n_direct]
        snode[d_start] = esrc[jj]
        snode[d_start + 1] = edst[jj]
        fill(sstart[n_open + n_direct:], glens[loop_g], order[is_loop[elem_group]])
        loop = np.zeros(nch, bool)
        loop[n_open + n_direct:] = True
        schain = np.repeat(np.arange(nch), lens)
        sidx = np.arange(total) - sstart[schain]
        endpoint = ~loop[schain] & ((sidx == 0) | (sidx == lens[schain] - 1))
        # first step of every chain (a loop: its head's out-edge) and the regions on its left and right
        s0 = snode[sstart]
        s1 = snode[sstart + 1]
        first_dir = np.select([nx[s1] > nx[s0], ny[s1] > ny[s0], nx[s1] < nx[s0]], [0, 1, 2], 3)
        first_dir = np.where(loop, sdir[s0], first_dir)
        ddx, ddy = _DX[first_dir], _DY[first_dir]
        mx2 = 2 * nx[s0] + ddx  # doubled midpoint of the first unit step
        my2 = 2 * ny[s0] + ddy
        lcol = (mx2 - ddy - 1) // 2
        lrow = (my2 + ddx - 1) // 2
        rcol = (mx2 + ddy - 1) // 2
        rrow = (my2 - ddx - 1) // 2
        left = pad[lrow + 1, lcol + 1]
        right = pad[rrow + 1, rcol + 1]
        cls = self.region_class
        reg = np.array(sorted(self.regular_classes), np.int64)
        regular = (left >= 0) & np.isin(cls[np.maximum(left, 0)], reg) | (right >= 0) & np.isin(cls[np.maximum(right, 0)], reg)
        frozen = (left < 0) | (right < 0)
        # the last step into the end node of open chains
        e1 = snode[sstart + lens - 1]
        e0 = snode[sstart + lens - 2]
        last_dir = np.select([nx[e1] > nx[e0], ny[e1] > ny[e0], nx[e1] < nx[e0]], [0, 1, 2], 3)
        # chain state
        self.nx = nx.astype(np.float64)
        self.ny = ny.astype(np.float64)
        self.npx = self.nx.copy()
        self.npy = self.ny.copy()
        self.njunction = junction
        self.snode, self.schain, self.sidx = snode, schain, sidx
        self.sstart, self.slen, self.loop = sstart, lens, loop
        self.left, self.right, self.frozen, self.regular = left, right, frozen, regular
        self.first_dir, self.last_dir = first_dir, last_dir
        self.start_node = np.where(loop, -1, s0)
        self.end_node = np.where(loop, -1, e1)
        interior = ~endpoint
        self.interior = interior
        self.movable = interior & ~frozen[schain]
        self.alive = np.ones(total, bool)
        self.ccount = np.where(loop, lens, lens - 2)
        self.floor = np.where(loop, 3, np.where(self.start_node == self.end_node, 2, 0))
        nxt = np.arange(total) + 1
        prv = np.arange(total) - 1
        last_slot = sstart + lens - 1
        nxt[last_slot] = np.where(loop, sstart, -1)
        prv[sstart] = np.where(loop, last_slot, -1)
        self.nxt, self.prv = nxt, prv
        # pixel paths: the nodes of each chain in order (loops twice, so a wrapping range is contiguous)
        glen = np.where(loop, 2 * lens, lens)
        self.gstart = np.concatenate([[0], np.cumsum(glen)[:-1]]).astype(np.int64)
        grow = np.repeat(np.arange(nch), glen)
        gidx = np.arange(int(glen.sum())) - self.gstart[grow]
        gnode = snode[sstart[grow] + gidx % lens[grow]]
        self.G = np.column_stack([self.nx[gnode], self.ny[gnode]])
        self.E = np.zeros(total)  # fidelity of the edge slot -> nxt[slot]
        self._clock = 0  # counts changes: a vertex's energy is re-evaluated only after one near it
        self._lattice = True  # no vertex has left its pixel corner yet
        self._changed = np.zeros(total, np.int64)  # when each vertex (or its link) last changed
        self._seen: dict[float, np.ndarray] = {}  # step -> when each vertex was last evaluated at that step
        # tie-break order of collapses and moves: a fixed scramble of the pixel corner of each vertex
        corner = nk[snode].astype(np.uint64)
        self.prio = ((corner * np.uint64(2654435761) + np.uint64(40503)) % np.uint64(4294967291)).astype(np.int64)
        # junction pairs joined by a chain without inner vertex (a second one would close a region)
        self._direct = set()
        for ci in np.flatnonzero(~loop & (self.ccount == 0)).tolist():
            self._direct.add(self._pair(int(self.start_node[ci]), int(self.end_node[ci])))

    @staticmethod
    def _pair(a: int, b: int) -> tuple[int, int]:
        return (a, b) if a < b else (b, a)

    # ---- energy terms
    def _span_err(self, sa: np.ndarray, sc: np.ndarray) -> np.ndarray:
        """Fidelity of the edges slot sa -> slot sc (same chain, sc after sa) at the current positions."""
        if len(sa) == 0:
            return np.zeros(0)
        ch = self.schain[sa]
        ia, ic = self.sidx[sa], self.sidx[sc]
        ic = np.where(self.loop[ch] & (ic <= ia), ic + self.slen[ch], ic)
        first = self.gstart[ch] + ia
        last = self.gstart[ch] + ic
        na, nc = self.snode[sa], self.snode[sc]
        return _lobe_areas(self.npx[na], self.npy[na], self.npx[nc], self.npy[nc], self.G, first, last)

    def _irr(self, p: np.ndarray, v: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Irregularity at slot v for the turn p -> v -> q (0 unless v is a free chain vertex)."""
        pn, vn, qn = self.snode[p], self.snode[v], self.snode[q]
        val = _deviations(self.npx[pn], self.npy[pn], self.npx[vn], self.npy[vn], self.npx[qn], self.npy[qn])
        return np.where(self.movable[v], val, 0.0)

    def _irr_many(self, triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """`_irr` of several (p, v, q) slot arrays in one pass."""
        sizes = [len(t[0]) for t in triples]
        p, v, q = (np.concatenate([t[i] for t in triples]) for i in range(3))
        out = self._irr(p, v, q)
        return np.split(out, np.cumsum(sizes)[:-1])

    def _gains(self, S: np.ndarray, max_run: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Best energy change of removing slot S and up to max_run - 1 that follow (delta, k; inf if none).

        The runs stop at the end of the chain, at its floor (loops keep 3 vertices, a chain
        from a junction back to it 2) and before wrapping around to prv[S].
        """
        m = len(S)
        best = np.full(m, np.inf)
        bestk = np.zeros(m, np.int64)
        if m == 0:
            return best, bestk
        nxt, prv, E = self.nxt, self.prv, self.E
        ch = self.schain[S]
        cnt = self.ccount[ch]
        fl = self.floor[ch]
        a = prv[S]
        ok = np.ones(m, bool)
        old = E[a] + E[S]
        last = S
        cs, oks, olds = [], [], []
        for k in range(1, max_run + 1):
            c = nxt[last]
            ok = ok & (cnt - k >= fl) & (c != a) & (c >= 0)
            if k > 1:
                old = old + E[last]
            cs.append(np.where(ok, c, a))
            oks.append(ok)
            olds.append(old)
            ok = ok & self.movable[np.maximum(c, 0)]  # runs go on through free vertices only
            last = np.where(ok, c, last)
        idx = [np.flatnonzero(o) for o in oks]
        new = np.split(self._span_err(np.concatenate([a[i] for i in idx]), np.concatenate([c[i] for c, i in zip(cs, idx)])),
                       np.cumsum([len(i) for i in idx])[:-1])
        deltas = []
        for k in range(max_run):
            d = np.full(m, np.inf)
            d[idx[k]] = new[k] - olds[k][idx[k]] - (k + 1) * self.vertex_cost
            deltas.append(d)
        if self.angle_cost > 0:
            reg = self.regular[ch]
            ridx = [i[reg[i]] for i in idx]
            if any(len(i) for i in ridx):
                r0 = ridx[0]
                triples = [(prv[a[r0]], a[r0], S[r0]), (a[r0], S[r0], nxt[S[r0]])]
                prev_c = [S] + cs[:-1]
                for k in range(max_run):
                    i = ridx[k]
                    ai, ci = a[i], cs[k][i]
                    triples += [(prev_c[k][i], ci, nxt[ci]), (prv[ai], ai, ci), (ai, ci, nxt[ci])]
                vals = self._irr_many(triples)
                before = np.zeros(m)
                before[r0] = vals[0] + vals[1]
                for k in range(max_run):
                    i = ridx[k]
                    irr_c, after_a, after_c = vals[2 + 3 * k: 5 + 3 * k]
                    deltas[k][i] += self.angle_cost * (after_a + after_c - before[i] - irr_c)
                    before[i] += irr_c
        for k in range(max_run):
            better = deltas[k] < best
            best = np.where(better, deltas[k], best)
            bestk = np.where(better, k + 1, bestk)
        return best, bestk

    # ---- spatial look-ups
    def _point_grid(self, margin: float = 0.0):
        """(live vertex node ids, their grid): the points no operation may sweep over."""
        nodes = np.flatnonzero(self._node_alive())
        x, y = self.npx[nodes], self.npy[nodes]
        h, w = self.shape
        return nodes, _Grid(x, y, x, y, _cell_size(len(nodes), w, h), margin)

    def _node_alive(self) -> np.ndarray:
        """Per node: still a vertex (junctions always are)."""
        alive = self.njunction.copy()
        s = np.flatnonzero(self.alive & self.interior)
        alive[self.snode[s]] = True
        return alive

    def _triangles_hit(self, grid, nodes, tri: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Whether any live vertex other than `own` (m, j node ids, -1 padded) lies in each closed
        triangle tri (m, 3, 2 coordinates)."""
        m = len(tri)
        hit = np.zeros(m, bool)
        if m == 0:
            return hit
        xs, ys = tri[..., 0], tri[..., 1]
        qi, item = grid.query(xs.min(axis=1), ys.min(axis=1), xs.max(axis=1), ys.max(axis=1))
        if len(qi) == 0:
            return hit
        pt = nodes[item]
        keep = ~(own[qi] == pt[:, None]).any(axis=1)
        keep &= self._alive_node[pt]
        qi, pt = qi[keep], pt[keep]
        inside = _in_triangle(xs[qi, 0], ys[qi, 0], xs[qi, 1], ys[qi, 1], xs[qi, 2], ys[qi, 2], self.npx[pt], self.npy[pt])
        hit[qi[inside]] = True
        return hit

    def _xy(self, slots: np.ndarray) -> np.ndarray:
        nodes = self.snode[slots]
        return np.stack([self.npx[nodes], self.npy[nodes]], axis=-1)

    # ---- collapse
    def simplify(self, max_run: int = 3) -> int:
        """Greedy collapses (best energy gain first) while one lowers the energy; returns the count."""
        total = len(self.snode)
        delta = np.full(total, np.inf)
        kbest = np.zeros(total, np.int64)
        blocked = np.zeros(total, bool)
        dirty = self.alive & self.movable
        self._alive_node = self._node_alive()
        nodes, grid = self._point_grid()
        done = 0
        reach = self._REACH
        while True:
            idx = np.flatnonzero(dirty & self.alive & self.movable)
            dirty[:] = False
            if len(idx):
                delta[idx], kbest[idx] = self._gains(idx, max_run)
                blocked[idx] = False
            cand = self.alive & self.movable & (delta < 0) & ~blocked
            cu = np.flatnonzero(cand)
            if len(cu) == 0:
                break
            key = np.where(cand, np.round(delta, 9), np.inf)
            ku, pu = key[cu], self.prio[cu]
            lose = np.zeros(len(cu), bool)
            for side in (self.nxt, self.prv):
                x = cu
                for _ in range(reach):
                    x = np.where(x >= 0, side[np.maximum(x, 0)], -1)
                    ok = x >= 0
                    xs = np.maximum(x, 0)
                    kx = np.where(ok, key[xs], np.inf)
                    lose |= (kx < ku) | ((kx == ku) & (self.prio[xs] < pu) & ok & (xs != cu))
            sel = cu[~lose]
            done += self._collapse(sel, kbest[sel], grid, nodes, blocked, dirty)
        return done

    def _collapse(self, sel, k, grid, nodes, blocked, dirty) -> int:
        """Collapse the runs starting at the slots `sel` (independent); as many of each as stay valid."""
        m = len(sel)
        nxt, prv = self.nxt, self.prv
        a = prv[sel]
        seq = np.full((m, 5), -1, np.int64)
        seq[:, 0] = a
        seq[:, 1] = sel
        for j in range(2, 5):
            prev = seq[:, j - 1]
            seq[:, j] = np.where((j <= k + 1) & (prev >= 0), nxt[np.maximum(prev, 0)], -1)
        own = np.where(seq >= 0, self.snode[np.maximum(seq, 0)], -1)
        # fan triangles (a, u_j, u_j+1), j = 1..k: removing u_1, then u_2, ... one at a time
        owner, jj = np.nonzero(np.arange(1, 4)[None, :] <= k[:, None])
        jj = jj + 1
        tri_slots = np.stack([seq[owner, 0], seq[owner, jj], seq[owner, jj + 1]], axis=1)
        # the vertices still there when u_j goes: a, u_j, u_j+1 and the ones after are points to avoid
        own_j = np.where(np.arange(5)[None, :] <= jj[:, None] + 1, own[owner], -1)
        tri = self._xy(tri_slots)
        hit = np.zeros(len(tri), bool)
        look = np.arange(len(tri))
        if self._lattice:  # every vertex on a pixel corner: a triangle of area 1/2 holds no other (Pick)
            twice = np.abs(_cross(tri[:, 0, 0], tri[:, 0, 1], tri[:, 1, 0], tri[:, 1, 1], tri[:, 2, 0], tri[:, 2, 1]))
            look = np.flatnonzero(twice != 1.0)
        if len(look):
            hit[look] = self._triangles_hit(grid, nodes, tri[look], own_j[look])
        first_bad = np.full(m, 4)
        np.minimum.at(first_bad, owner[hit], jj[hit])
        take = np.minimum(k, first_bad - 1)
        # a chain emptied between two junctions must not double another junction-to-junction edge
        ch = self.schain[sel]
        empties = np.flatnonzero(~self.loop[ch] & (self.ccount[ch] - take == 0) & (take > 0))
        for i in empties.tolist():
            c = int(ch[i])
            pair = self._pair(int(self.start_node[c]), int(self.end_node[c]))
            if pair in self._direct:
                take[i] -= 1
            else:
                self._direct.add(pair)
        blocked[sel[take == 0]] = True
        go = np.flatnonzero(take > 0)
        if len(go) == 0:
            return 0
        seq, take, a = seq[go], take[go], a[go]
        newc = seq[np.arange(len(go)), take + 1]
        gone_r, gone_c = np.nonzero(np.arange(1, 4)[None, :] <= take[:, None])
        gone = seq[gone_r, gone_c + 1]
        self.alive[gone] = False
        self._alive_node[self.snode[gone]] = False
        nxt[a] = newc
        prv[newc] = a
        np.add.at(self.ccount, self.schain[gone], -1)
        self.E[a] = self._span_err(a, newc)
        # gains that depend on the new edge: three vertices before a, a, and two after
        # the gains that depend on the new edge a -> newc: three vertices before a, a, newc and the one after
        touched = [a, newc, np.where(newc >= 0, nxt[np.maximum(newc, 0)], -1)]
        x = a
        for _ in range(3):
            x = np.where(x >= 0, prv[np.maximum(x, 0)], -1)
            touched.append(x)
        t = np.concatenate(touched)
        t = t[t >= 0]
        dirty[t] = True
        self._clock += 1
        self._changed[a] = self._clock
        self._changed[newc] = self._clock
        return int(len(gone))

    # ---- relocation
    _DIRS = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [-1, -1], [1, -1], [-1, 1.0]])

    def relocate(self, steps: Sequence[float] = (0.5, 0.25, 0.125, 0.0625), sweeps: int = 1) -> int:
        """Move free chain vertices to lower the energy (pattern search, vertices 3 apart together).

        At each step a vertex is evaluated again only if it, or a vertex its energy depends on
        (two along the chain either side), moved or lost a neighbour since it was last
        evaluated at that step (in this call or an earlier one): its 9 energies would be the
        same. (A move that was blocked by a vertex farther away that has moved since is then
        not tried again.) Returns the number of vertices moved.
        """
        free = self.alive & self.movable
        if not free.any():
            return 0
        ch = self.schain
        csum = np.cumsum(free)
        rank = csum - 1 - (csum[self.sstart] - free[self.sstart])[ch]
        cnt = self.ccount[ch]
        colour = rank % 3
        spare = 3 * (cnt // 3)
        colour = np.where(self.loop[ch] & (rank >= spare), 3 + rank - spare, colour)
        batches = [np.flatnonzero(free & (colour == c)) for c in range(5)]
        batches = [b for b in batches if len(b)]
        self._alive_node = self._node_alive()
        drift = 1.5 * sweeps * float(sum(steps)) + 1.0
        nodes, pgrid = self._point_grid(margin=drift)
        es = np.flatnonzero(self.alive & (self.nxt >= 0))
        ea, eb = self.snode[es], self.snode[self.nxt[es]]
        ex0, ex1 = np.minimum(self.npx[ea], self.npx[eb]), np.maximum(self.npx[ea], self.npx[eb])
        ey0, ey1 = np.minimum(self.npy[ea], self.npy[eb]), np.maximum(self.npy[ea], self.npy[eb])
        h, w = self.shape
        egrid = _Grid(ex0, ey0, ex1, ey1, _cell_size(len(es), w, h), margin=drift)
        self._reloc_index = (nodes, pgrid, es, egrid)
        # chains whose vertex makes, with its two neighbours, a whole region (a triangle that must keep its side)
        cc = self.ccount
        small = (self.loop & (cc == 3)) | (~self.loop & (self.start_node == self.end_node) & (cc == 2))
        for c in np.flatnonzero(~self.loop & (cc == 1)).tolist():
            if self._pair(int(self.start_node[c]), int(self.end_node[c])) in self._direct:
                small[c] = True
        self._small_region = small
        total = len(self.snode)
        moved = np.zeros(total, bool)
        nxt, prv = self.nxt, self.prv
        changed = self._changed
        for step in steps:
            seen = self._seen.setdefault(float(step), np.full(total, -1, np.int64))
            for _ in range(sweeps):
                for batch in batches:
                    # only where the vertex, its neighbours or theirs changed since its last look at this step
                    a, b = prv[batch], nxt[batch]
                    recent = np.maximum(np.maximum(changed[batch], changed[a]), changed[b])
                    recent = np.maximum(recent, changed[prv[a]] * (prv[a] >= 0))
                    recent = np.maximum(recent, changed[nxt[b]] * (nxt[b] >= 0))
                    batch = batch[recent > seen[batch]]
                    if len(batch) == 0:
                        continue
                    self._clock += 1
                    seen[batch] = self._clock
                    done = self._relocate_batch(batch, step)
                    if len(done):
                        self._clock += 1
                        changed[done] = self._clock
                        moved[done] = True
        return int(moved.sum())

    def _relocate_batch(self, U, step) -> np.ndarray:
        """Move each vertex of U (independent: 3 apart on chains) to its best of 9 positions around it."""
        m = len(U)
        K = len(self._DIRS)
        nxt, prv, snode, npx, npy = self.nxt, self.prv, self.snode, self.npx, self.npy
        a, b = prv[U], nxt[U]
        un, an, bn = snode[U], snode[a], snode[b]
        ux, uy = npx[un], npy[un]
        ax, ay, bx, by = npx[an], npy[an], npx[bn], npy[bn]
        cx = ux[:, None] + step * self._DIRS[:, 0]
        cy = uy[:, None] + step * self._DIRS[:, 1]
        ch = self.schain[U]
        gs = self.gstart[ch]
        ia, iu, ib = self.sidx[a], self.sidx[U], self.sidx[b]
        wrap = np.where(self.loop[ch], self.slen[ch], 0)
        iu1 = iu + wrap * (iu <= ia)
        ib2 = ib + wrap * (ib <= iu)
        # both edges of every vertex in one evaluation: a -> candidate and candidate -> b
        K1 = K - 1  # candidate 0 is the current position: its fidelity is cached
        ox, oy, tx, ty = (np.empty((2 * m, K1)) for _ in range(4))
        ox[:m], oy[:m], tx[:m], ty[:m] = ax[:, None], ay[:, None], cx[:, 1:], cy[:, 1:]
        ox[m:], oy[m:], tx[m:], ty[m:] = cx[:, 1:], cy[:, 1:], bx[:, None], by[:, None]
        e = _lobe_areas(ox, oy, tx, ty, self.G, np.concatenate([gs + ia, gs + iu]), np.concatenate([gs + iu1, gs + ib2]),
                        np.arange(2 * m) < m)
        e1 = np.column_stack([self.E[a], e[:m]])
        e2 = np.column_stack([self.E[U], e[m:]])
        energy = e1 + e2
        if self.angle_cost > 0:
            r = np.flatnonzero(self.regular[ch])
            if len(r):
                n = len(r)
                pa, nb = snode[prv[a[r]]], snode[nxt[b[r]]]
                # turns at the vertex (a -> candidate -> b), at a (prv a -> a -> candidate), at b (candidate -> b -> nxt b)
                pts = np.empty((6, 3 * n, K))
                pts[0, :n], pts[1, :n], pts[2, :n], pts[3, :n], pts[4, :n], pts[5, :n] = (
                    ax[r, None], ay[r, None], cx[r], cy[r], bx[r, None], by[r, None])
                pts[0, n:2 * n], pts[1, n:2 * n], pts[2, n:2 * n], pts[3, n:2 * n], pts[4, n:2 * n], pts[5, n:2 * n] = (
                    npx[pa][:, None], npy[pa][:, None], ax[r, None], ay[r, None], cx[r], cy[r])
                pts[0, 2 * n:], pts[1, 2 * n:], pts[2, 2 * n:], pts[3, 2 * n:], pts[4, 2 * n:], pts[5, 2 * n:] = (
                    cx[r], cy[r], bx[r, None], by[r, None], npx[nb][:, None], npy[nb][:, None])
                dev = _deviations(*pts)
                irr = dev[:n] + dev[n:2 * n] * self.movable[a[r]][:, None] + dev[2 * n:] * self.movable[b[r]][:, None]
                energy[r] += self.angle_cost * irr
        better = energy < energy[:, :1] - 1e-9
        cand = np.flatnonzero(better.any(axis=1))
        if len(cand) == 0:
            return np.zeros(0, np.int64)
        order = np.argsort(energy[cand], axis=1, kind="stable")
        small = self._small_region[ch[cand]]
        choice = np.zeros(m, np.int64)
        active = np.arange(len(cand))
        for t in range(K):
            i = cand[active]
            col = order[active, t]
            keep = better[i, col]
            if not keep.all():
                active, i, col = active[keep], i[keep], col[keep]
            if len(active) == 0:
                break
            ok = self._move_ok(i, cx[i, col], cy[i, col], U, a, un, an, bn, small[active])
            choice[i[ok]] = col[ok]
            active = active[~ok]
            if len(active) == 0:
                break
        go = np.flatnonzero(choice)
        if len(go) == 0:
            return np.zeros(0, np.int64)
        c = choice[go]
        px, py = cx[go, c], cy[go, c]
        if len(go) > 1:
            keep = self._mutually_ok(px, py, U[go], un[go], an[go], bn[go])
            go, c, px, py = go[keep], c[keep], px[keep], py[keep]
        npx[un[go]] = px
        npy[un[go]] = py
        self._lattice = False
        self.E[a[go]] = e1[go, c]
        self.E[U[go]] = e2[go, c]
        return U[go]

    def _move_ok(self, i, px, py, U, a, un, an, bn, small) -> np.ndarray:
        """Whether moving vertex U[i] to (px, py) keeps the partition valid: the new edges do not
        fold onto each other, no vertex lies in the area they sweep, no edge crosses the path
        of the vertex, and a region that is a triangle keeps its orientation."""
        npx, npy = self.npx, self.npy
        ax, ay = npx[an[i]], npy[an[i]]
        bx, by = npx[bn[i]], npy[bn[i]]
        ux, uy = npx[un[i]], npy[un[i]]
        n = len(i)
        nodes, pgrid, es, egrid = self._reloc_index
        cr = _cross(ax, ay, px, py, bx, by)
        ok = ~((np.abs(cr) <= _EPS_AREA) & ((ax - px) * (bx - px) + (ay - py) * (by - py) >= 0))
        if small.any():
            sign0 = np.sign(_cross(ax, ay, ux, uy, bx, by))
            ok &= ~small | ((np.sign(cr) == sign0) & (np.abs(cr) > _EPS_AREA))
        # no other vertex in the swept triangles (a, u, u') and (b, u, u')
        ex, ey = np.concatenate([ax, bx]), np.concatenate([ay, by])
        ux2, uy2, px2, py2 = (np.concatenate([z, z]) for z in (ux, uy, px, py))
        own = np.concatenate([an[i], bn[i]])
        qi, item = pgrid.query(np.minimum(np.minimum(ex, ux2), px2), np.minimum(np.minimum(ey, uy2), py2),
                               np.maximum(np.maximum(ex, ux2), px2), np.maximum(np.maximum(ey, uy2), py2))
        if len(qi):
            pt = nodes[item]
            keep = (pt != own[qi]) & (pt != un[i][qi % n]) & self._alive_node[pt]
            qi, pt = qi[keep], pt[keep]
            inside = _in_triangle(ex[qi], ey[qi], ux2[qi], uy2[qi], px2[qi], py2[qi], npx[pt], npy[pt])
            bad = np.zeros(2 * n, bool)
            bad[qi[inside]] = True
            ok &= ~(bad[:n] | bad[n:])
        # no edge across the path of the vertex
        qi, item = egrid.query(np.minimum(ux, px), np.minimum(uy, py), np.maximum(ux, px), np.maximum(uy, py))
        if len(qi):
            s = es[item]
            keep = (s != a[i][qi]) & (s != U[i][qi])
            qi, s = qi[keep], s[keep]
            p0, p1 = self.snode[s], self.snode[self.nxt[s]]
            meet = _segments_meet(ux[qi], uy[qi], px[qi], py[qi], npx[p0], npy[p0], npx[p1], npy[p1])
            bad = np.zeros(n, bool)
            bad[qi[meet]] = True
            ok &= ~bad
        return ok

    def _mutually_ok(self, px, py, U, un, an, bn) -> np.ndarray:
        """Which of the moves of one batch to keep: of two that would meet (new edges crossing
        or touching, a new position in the other's swept area), the later in a fixed order goes."""
        n = len(U)
        npx, npy = self.npx, self.npy
        ax, ay, bx, by = npx[an], npy[an], npx[bn], npy[bn]
        ux, uy = npx[un], npy[un]
        x0 = np.minimum(np.minimum(ax, bx), np.minimum(ux, px))
        x1 = np.maximum(np.maximum(ax, bx), np.maximum(ux, px))
        y0 = np.minimum(np.minimum(ay, by), np.minimum(uy, py))
        y1 = np.maximum(np.maximum(ay, by), np.maximum(uy, py))
        # pairs whose boxes overlap: sweep along x
        o = np.argsort(x0, kind="stable")
        sx0 = x0[o]
        hi = np.searchsorted(sx0, x1[o], "right")
        cnt = hi - np.arange(n) - 1
        keep = np.ones(n, bool)
        if cnt.max(initial=0) <= 0:
            return keep
        qi = np.repeat(np.arange(n), np.maximum(cnt, 0))
        j = np.arange(len(qi)) - np.repeat(np.cumsum(np.maximum(cnt, 0)) - np.maximum(cnt, 0), np.maximum(cnt, 0)) + qi + 1
        qi, j = o[qi], o[j]
        near = (y0[qi] <= y1[j]) & (y0[j] <= y1[qi])
        qi, j = qi[near], j[near]
        if len(qi) == 0:
            return keep
        bad = np.zeros(len(qi), bool)
        for (s0x, s0y, s1x, s1y, sa), (t0x, t0y, t1x, t1y, ta) in (
            ((ax, ay, px, py, an), (ax, ay, px, py, an)),
            ((ax, ay, px, py, an), (px, py, bx, by, bn)),
            ((px, py, bx, by, bn), (ax, ay, px, py, an)),
            ((px, py, bx, by, bn), (px, py, bx, by, bn)),
        ):
            meet = _segments_meet(s0x[qi], s0y[qi], s1x[qi], s1y[qi], t0x[j], t0y[j], t1x[j], t1y[j])
            bad |= meet & (sa[qi] != ta[j])  # edges from one junction meet there
        for p, q in ((qi, j), (j, qi)):  # the new position in the other's swept triangles
            for ex, ey in ((ax, ay), (bx, by)):
                bad |= _in_triangle(ex[p], ey[p], ux[p], uy[p], px[p], py[p], px[q], py[q])
        if bad.any():
            pr = self.prio[U]
            qi, j = qi[bad], j[bad]
            keep[np.where(pr[qi] > pr[j], qi, j)] = False
        return keep

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

    # ---- output
    def rings(self, wanted: np.ndarray | None = None) -> dict[int, list[np.ndarray]]:
        """Closed rings (n, 2) of every region (or of the regions where `wanted[region]`),
        oriented with the region on the left: shells counter-clockwise in (x, y), holes clockwise."""
        alive = np.flatnonzero(self.alive)
        ch_of = self.schain[alive]
        cuts = np.searchsorted(ch_of, np.arange(len(self.slen) + 1))
        xy = self._xy(alive)
        left, right = self.left, self.right

        def want(r: int) -> bool:
            return r >= 0 and (wanted is None or bool(wanted[r]))

        out: dict[int, list[np.ndarray]] = {}
        for c in np.flatnonzero(self.loop).tolist():
            pts = xy[cuts[c]:cuts[c + 1]]
            if want(int(left[c])):
                out.setdefault(int(left[c]), []).append(pts)
            if want(int(right[c])):
                out.setdefault(int(right[c]), []).append(pts[::-1])
        # open chains: traversals linked at junctions, turning as far left as the region allows
        opened = np.flatnonzero(~self.loop)
        starts: dict[tuple[int, int], int] = {}
        region: dict[int, int] = {}
        for c in opened.tolist():
            if want(int(left[c])):
                starts[(int(self.start_node[c]), int(self.first_dir[c]))] = 2 * c
                region[2 * c] = int(left[c])
            if want(int(right[c])):
                starts[(int(self.end_node[c]), (int(self.last_dir[c]) + 2) % 4)] = 2 * c + 1
                region[2 * c + 1] = int(right[c])
        seen: set[int] = set()
        for t0 in sorted(region):
            if t0 in seen:
                continue
            r = region[t0]
            parts = []
            t = t0
            while t not in seen:
                seen.add(t)
                c, back = divmod(t, 2)
                pts = xy[cuts[c]:cuts[c + 1]]
                if back:
                    pts = pts[::-1]
                    node, d = int(self.start_node[c]), (int(self.first_dir[c]) + 2) % 4
                else:
                    node, d = int(self.end_node[c]), int(self.last_dir[c])
                parts.append(pts[:-1])
                for turn in (1, 0, 3):
                    t2 = starts.get((node, (d + turn) % 4))
                    if t2 is not None and region[t2] == r:
                        break
                else:
                    raise RuntimeError("open boundary ring")  # cannot happen on a valid partition
                t = t2
            out.setdefault(r, []).append(np.concatenate(parts))
        return out

    def region_polygons(self, wanted: np.ndarray | None = None) -> dict[int, shapely.Geometry]:
        """Polygon (pixel coordinates) of every region (or of those where `wanted[region]`)."""
        rings = self.rings(wanted)
        out: dict[int, shapely.Geometry] = {}
        simple_r, simple_c = [], []
        for r, rs in rings.items():
            if len(rs) == 1:
                simple_r.append(r)
                simple_c.append(rs[0])
                continue
            area = [_signed_area(p) for p in rs]
            shells = [shapely.Polygon(p) for p, s in zip(rs, area) if s > 0]
            holes = [p for p, s in zip(rs, area) if s <= 0]
            if len(shells) == 1:
                geom = shapely.Polygon(shells[0].exterior, holes)
            else:
                geom = shapely.difference(shapely.union_all(shells), shapely.union_all([shapely.Polygon(h) for h in holes]))
            out[r] = geom
        if simple_r:
            sizes = np.array([len(p) for p in simple_c])
            coords = np.concatenate(simple_c)
            ring_ix = np.repeat(np.arange(len(simple_c)), sizes)
            polys = shapely.polygons(shapely.linearrings(coords, indices=ring_ix))
            out.update(zip(simple_r, polys))
        keys = list(out)
        geoms = np.array([out[k] for k in keys], dtype=object)
        bad = np.flatnonzero(~shapely.is_valid(geoms))
        for i in bad.tolist():  # a region touching itself at a junction: rings that touch
            parts = shapely.get_parts(shapely.make_valid(geoms[i], method="structure", keep_collapsed=False))
            parts = [g for g in parts if g.geom_type == "Polygon" and not g.is_empty]
            out[keys[i]] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
        return out

    def triangles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vertices (n,2), triangles (m,3) counter-clockwise, their region ids): a constrained
        triangulation of the region polygons."""
        pts, tris, labs = [], [], []
        offset = 0
        for region, geom in self.region_polygons().items():
            parts = shapely.get_parts(shapely.constrained_delaunay_triangles(geom))
            if len(parts) == 0:
                continue
            c = shapely.get_coordinates(shapely.get_exterior_ring(parts)).reshape(len(parts), 4, 2)[:, :3]
            cross = _cross(c[:, 0, 0], c[:, 0, 1], c[:, 1, 0], c[:, 1, 1], c[:, 2, 0], c[:, 2, 1])
            c[cross < 0] = c[cross < 0][:, ::-1]
            pts.append(c.reshape(-1, 2))
            tris.append(offset + np.arange(3 * len(parts)).reshape(-1, 3))
            labs.append(np.full(len(parts), region))
            offset += 3 * len(parts)
        if not pts:
            return np.zeros((0, 2)), np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
        return np.vstack(pts), np.vstack(tris), np.concatenate(labs)

    def min_signed_area(self) -> float:
        """Smallest doubled triangle area of a triangulation of the regions (positive = none degenerate)."""
        pts, tri, _ = self.triangles()
        a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
        return float(_cross(a[:, 0], a[:, 1], b[:, 0], b[:, 1], c[:, 0], c[:, 1]).min())


def _signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


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
    if labels.dtype.kind in "ui" and labels.size and labels.min() >= 0 and labels.max() < 1 << 16:
        present = np.flatnonzero(np.bincount(labels.ravel()))
    else:
        present = np.unique(labels)
    if all(int(v) in skip for v in present.tolist()):
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
    wanted = ~np.isin(region_class, list(skip))
    for region, geom in mesh.region_polygons(wanted).items():
        cls = int(region_class[region])
        if cls in skip:
            continue
        for part in getattr(geom, "geoms", [geom]):
            out.append((cls, float(conf[region]), float(counts[region]), part))
    return out


def _block_polygons_args(args: tuple) -> list[tuple[int, float, float, shapely.Geometry]]:
    labels, probabilities, instances, lam_px, mu_px, skip, regular, separation = args
    if separation is not None:  # (building class, pixel metres, core metres): in the worker, in parallel
        labels = separate_buildings(labels, *separation)
    if probabilities is not None and probabilities.dtype == np.uint8:
        probabilities = probabilities.astype(np.float32) / 255.0
    return _block_polygons(labels, probabilities, instances, lam_px, mu_px, skip, regular)


def _bounded_map(fn: Callable, items: Iterable, pool: ProcessPoolExecutor | None, ahead: int) -> Iterator:
    """`map(fn, items)` in order; with a pool, at most `ahead` items read and in flight at once
    (`Executor.map` would read every block of the raster before the first result)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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
    workers: int | None = None,
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
        workers: processes meshing blocks in parallel (blocks are independent; the result does
            not depend on it). None: one per available core for rasters of AUTO_PARALLEL_PIXELS
            or more, else 1 (starting the processes costs about half a second). Threads would
            not help: the work holds the interpreter lock between numpy calls.

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
    if workers is not None and workers < 1:
        raise InputError("workers", "must be >= 1")
    h, w = arr.shape

    def blocks():
        for r0 in range(0, h, block_size):
            for c0 in range(0, w, block_size):
                r1, c1 = min(r0 + block_size, h), min(c0 + block_size, w)
                yield (r0, c0, arr[r0:r1, c0:c1], None if probabilities is None else probabilities[:, r0:r1, c0:c1],
                       None if instances is None else instances[r0:r1, c0:c1])

    return mesh_blocks(blocks(), w, h, transform, crs, class_map=class_map, lam=lam, mu=mu, block_size=block_size,
                       min_area=min_area, regular_classes=regular_classes, background=background, workers=workers)


def mesh_blocks(
    blocks: Iterable[tuple[int, int, np.ndarray, np.ndarray | None, np.ndarray | None]],
    width: int,
    height: int,
    transform: Affine,
    crs=None,
    *,
    class_map: ClassMap | None = None,
    lam: float = DEFAULT_LAMBDA,
    mu: float = DEFAULT_MU,
    block_size: int = DEFAULT_BLOCK,
    min_area: float = 0.0,
    regular_classes: Sequence[int] | None = None,
    background: int = 0,
    workers: int | None = None,
    separate_core_m: float | None = None,
) -> gpd.GeoDataFrame:
    """`mesh_polygons` of a raster given as its `block_size` blocks, read as they are meshed:
    (row, col, classes, probabilities (uint8 x 255 or float) or None, instances or None) in
    row-major order. At most two blocks per worker are held at once, so memory does not grow
    with the raster. With `separate_core_m`, touching buildings are split in each block first
    (`geolabel.vectorize.separate`), in the workers."""
    mx, my = ground_pixel_size(transform, crs, width, height)
    pixel = math.sqrt(mx * my)
    regular = {building_class(class_map)} if regular_classes is None else {int(c) for c in regular_classes}
    skip = {int(background), IGNORE}
    separation = None if separate_core_m is None else (building_class(class_map), pixel, separate_core_m)
    n_blocks = math.ceil(height / block_size) * math.ceil(width / block_size)
    if workers is None:
        workers = _available_cores() if height * width >= AUTO_PARALLEL_PIXELS else 1
    workers = min(workers, n_blocks)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context()) if workers > 1 else None
    corners: list[tuple[int, int]] = []

    def jobs() -> Iterator[tuple]:
        for r0, c0, cls, probs, inst in blocks:
            corners.append((r0, c0))
            yield cls, probs, inst, lam / pixel, mu / pixel, skip, regular, separation

    pieces: list[tuple[int, float, float, shapely.Geometry]] = []
    try:
        results = _bounded_map(_block_polygons_args, jobs(), pool, ahead=2 * workers)
        for i, block in enumerate(progress(results, desc="mesh polygons", total=n_blocks, unit="block")):
            if block:
                r0, c0 = corners[i]
                moved = shapely.transform(np.array([g for *_, g in block], dtype=object),
                                          lambda p, dx=c0, dy=r0: p + (dx, dy))
                pieces.extend((cls, conf, count, g) for (cls, conf, count, _), g in zip(block, moved))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seams = [shapely.LineString([(0, r), (width, r)]) for r in range(block_size, height, block_size)]
    seams += [shapely.LineString([(c, 0), (c, height)]) for c in range(block_size, width, block_size)]
    pieces = _merge_seams(pieces, seams)
    geoms = np.array([p[3] for p in pieces], dtype=object)
    if len(geoms):
        a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
        geoms = shapely.transform(geoms, lambda p: np.column_stack([a * p[:, 0] + b * p[:, 1] + c,
                                                                   d * p[:, 0] + e * p[:, 1] + f]))
        if transform.a * transform.e - transform.b * transform.d < 0:
            geoms = shapely.orient_polygons(geoms) if hasattr(shapely, "orient_polygons") else geoms
    names = [class_map.names[p[0]] if class_map and p[0] < class_map.num_classes else str(p[0]) for p in pieces]
    areas = shapely.area(np.array([p[3] for p in pieces], dtype=object)) * (mx * my) if pieces else np.zeros(0)  # px -> m^2
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


def _worker_context() -> multiprocessing.context.ForkServerContext:
    """Where mesh workers come from: a fork server (never fork a parent that may hold TensorFlow's
    threads) that imports this module once, so the workers start without importing it again."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def start_workers_early(width: int, height: int) -> None:
    """Start the workers' fork server now if a `width` x `height` raster will be meshed in parallel:
    its imports (a second or two) then run beside the prediction instead of after it."""
    if width * height >= AUTO_PARALLEL_PIXELS and _available_cores() > 1:
        from multiprocessing import forkserver

        _worker_context()
        forkserver.ensure_running()


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

"""Label vectors: OpenStreetMap through Overpass, local OSM extracts, or any vector file.

Every source comes out as the same GeoDataFrame in EPSG:4326 with the columns
`class` (name), `class_id`, `width` (metres, for line features that are buffered
when rasterised, NaN for areas), `osm_id` and `tag` (the OSM tag that chose the class).

- Overpass: one `out geom` query over the AOI's bbox to a configurable endpoint; the
  response's `osm3s.timestamp_osm_base` is recorded.
- Extracts (`.osm`, `.osm.bz2`, `.osm.pbf`): read with GDAL's OSM driver (through
  pyogrio), which reads XML and PBF natively; bz2 is unpacked to a temporary file.
- Vector files (GeoJSON, GeoPackage, Shapefile, GeoParquet): a class column with class
  names or ids, or one class for every feature.
"""

from __future__ import annotations

import bz2
import hashlib
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from geolabel.classes import ClassMap
from geolabel.data.http import HttpClient
from geolabel.errors import FetchError, InputError

DEFAULT_OVERPASS_URL = "https://overpass-api.de/api/interpreter"
OSM_ATTRIBUTION = "Labels (c) OpenStreetMap contributors, ODbL 1.0 (https://www.openstreetmap.org/copyright)"
OSM_EXTENSIONS = (".osm", ".osm.bz2", ".osm.pbf", ".pbf")
COLUMNS = ["class", "class_id", "width", "osm_id", "tag", "geometry"]

# Carriageway width in metres by highway type (a road class pixel is within width/2 of the centreline).
ROAD_WIDTHS: dict[str, float] = {
    "motorway": 14.0, "trunk": 12.0, "primary": 10.0, "secondary": 8.0, "tertiary": 7.0,
    "motorway_link": 7.0, "trunk_link": 7.0, "primary_link": 7.0, "secondary_link": 6.0, "tertiary_link": 6.0,
    "unclassified": 6.0, "residential": 6.0, "road": 6.0, "living_street": 5.0, "service": 4.0,
    "pedestrian": 4.0, "busway": 4.0, "track": 3.0, "cycleway": 2.0, "footway": 2.0, "bridleway": 2.0,
    "steps": 2.0, "path": 1.5,
}
WATER_NATURAL = ("water", "wetland", "bay")
WATERWAY_AREAS = ("riverbank", "dock", "basin")


@dataclass(frozen=True)
class LabelRules:
    """Which OSM tags feed which class.

    Args:
        road_widths: highway type -> width in metres; other highway types are not roads.
        default_road_width: width of a road line from a vector file without a width.
    """

    road_widths: dict[str, float] = field(default_factory=lambda: dict(ROAD_WIDTHS))
    default_road_width: float = 6.0

    def classify(self, tags: dict[str, str], classes: ClassMap, closed: bool) -> tuple[str, float, str] | None:
        """(class, width, tag) for an OSM feature, or None when it feeds no class of `classes`.

        Args:
            tags: the feature's OSM tags.
            closed: the geometry is (or can be) an area.
        """
        names = set(classes.names)
        building = tags.get("building")
        if "building" in names and closed and building and building != "no":
            return "building", math.nan, f"building={building}"
        highway = tags.get("highway")
        if "road" in names and highway in self.road_widths and tags.get("area") != "yes":
            return "road", self.road_widths[highway], f"highway={highway}"
        if "water" in names and closed:
            if tags.get("natural") in WATER_NATURAL or "water" in tags or tags.get("waterway") in WATERWAY_AREAS or tags.get("landuse") in ("reservoir", "basin"):
                key = next(k for k in ("natural", "water", "waterway", "landuse") if k in tags)
                return "water", math.nan, f"{key}={tags[key]}"
        landuse = tags.get("landuse")
        if "landuse" in names and closed and landuse:
            return "landuse", math.nan, f"landuse={landuse}"
        return None

    def overpass_filters(self, classes: ClassMap) -> list[str]:
        """Overpass tag filters fetching every feature that can feed `classes`."""
        names = set(classes.names)
        filters = []
        if "building" in names:
            filters.append('["building"]')
        if "road" in names:
            filters.append('["highway"~"^(' + "|".join(sorted(self.road_widths)) + ')$"]')
        if "water" in names:
            filters += ['["natural"~"^(' + "|".join(WATER_NATURAL) + ')$"]', '["water"]', '["waterway"~"^(' + "|".join(WATERWAY_AREAS) + ')$"]']
        if "landuse" in names:
            filters.append('["landuse"]')
        unknown = names - {"background", "building", "road", "water", "landuse"}
        if unknown:
            raise InputError("classes", f"no OSM tags are known for class(es) {', '.join(sorted(unknown))}; use a vector file with a class column")
        return filters


def _frame(rows: list[dict]):
    import geopandas as gpd

    if not rows:
        return gpd.GeoDataFrame({c: [] for c in COLUMNS[:-1]}, geometry=[], crs="EPSG:4326")
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    areas = frame["width"].isna().to_numpy()
    frame.loc[areas, "geometry"] = [_polygonal(g) for g in frame.geometry.values[areas]]
    frame = frame[~frame.geometry.is_empty]
    frame["class_id"] = frame["class_id"].astype("uint8")
    frame["width"] = frame["width"].astype("float64")
    return frame[COLUMNS]


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """A valid (multi)polygon of an area geometry; empty when nothing areal is left."""
    geometry = shapely.make_valid(geometry)
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else Polygon()


def _row(geometry: BaseGeometry, cls: str, width: float, osm_id, tag: str, classes: ClassMap) -> dict:
    return {"class": cls, "class_id": classes.index(cls), "width": width, "osm_id": osm_id, "tag": tag, "geometry": geometry}


# ---------------------------------------------------------------- Overpass


def overpass_query(bbox: tuple[float, float, float, float], classes: ClassMap, rules: LabelRules | None = None, timeout: int = 180) -> str:
    """The Overpass QL query for every feature of `classes` in an EPSG:4326 bbox."""
    rules = rules or LabelRules()
    west, south, east, north = bbox
    area = f"({south!r},{west!r},{north!r},{east!r})"
    parts = [f"  {kind}{flt}{area};" for flt in rules.overpass_filters(classes) for kind in ("way", "relation")]
    return f"[out:json][timeout:{timeout}];\n(\n" + "\n".join(parts) + "\n);\nout geom;\n"


def _coords(geometry: list[dict] | None) -> list[tuple[float, float]]:
    return [(p["lon"], p["lat"]) for p in geometry or [] if p is not None]


def _rings_to_area(lines: list[list[tuple[float, float]]]) -> BaseGeometry:
    polys = list(shapely.polygonize([LineString(c) for c in lines if len(c) >= 2]).geoms)
    if not polys:
        return Polygon()
    # polygonize yields every face, holes included; the symmetric union keeps nesting right
    area = polys[0]
    for poly in polys[1:]:
        area = area.symmetric_difference(poly)
    return area


def overpass_to_frame(response: dict, classes: ClassMap, rules: LabelRules | None = None):
    """Features of an Overpass JSON response (`out geom`) as a label GeoDataFrame."""
    rules = rules or LabelRules()
    rows = []
    for element in response.get("elements", []):
        tags = element.get("tags") or {}
        kind = element.get("type")
        if kind == "way":
            coords = _coords(element.get("geometry"))
            if len(coords) < 2:
                continue
            closed = len(coords) >= 4 and coords[0] == coords[-1]
            found = rules.classify(tags, classes, closed)
            if found is None:
                continue
            cls, width, tag = found
            geometry = LineString(coords) if not math.isnan(width) else shapely.make_valid(Polygon(coords))
        elif kind == "relation" and tags.get("type") in ("multipolygon", "boundary"):
            found = rules.classify(tags, classes, True)
            if found is None or not math.isnan(found[1]):
                continue
            cls, width, tag = found
            members = [m for m in element.get("members", []) if m.get("type") == "way"]
            outer = _rings_to_area([_coords(m.get("geometry")) for m in members if m.get("role") != "inner"])
            inner = _rings_to_area([_coords(m.get("geometry")) for m in members if m.get("role") == "inner"])
            geometry = shapely.make_valid(outer.difference(inner)) if not inner.is_empty else outer
        else:
            continue
        if geometry.is_empty:
            continue
        rows.append(_row(geometry, cls, width, int(element["id"]), tag, classes))
    return _frame(rows)


def fetch_overpass(
    bbox: tuple[float, float, float, float],
    classes: ClassMap,
    url: str | None = None,
    client: HttpClient | None = None,
    rules: LabelRules | None = None,
) -> tuple[object, dict]:
    """Query Overpass at `url` for the features of `classes` in `bbox`.

    Returns:
        (labels GeoDataFrame, info) where info holds `osm_timestamp` and `overpass_url`.
    """
    url = url or DEFAULT_OVERPASS_URL
    client = client or HttpClient(connections=1, timeout=200)
    query = overpass_query(bbox, classes, rules)
    response = client.request("POST", url, data={"data": query})
    if response is None:
        raise FetchError(f"{url}: no Overpass interpreter here (HTTP 404)")
    try:
        payload = response.json()
    except ValueError as err:
        raise FetchError(f"{url}: the Overpass answer is not JSON ({response.text[:200]!r})") from err
    remark = payload.get("remark") or ""
    if "error" in remark.lower():
        raise FetchError(f"{url}: Overpass reported: {remark}")
    frame = overpass_to_frame(payload, classes, rules)
    timestamp = (payload.get("osm3s") or {}).get("timestamp_osm_base")
    return frame, {"osm_timestamp": timestamp, "overpass_url": url, "query": query}


# ---------------------------------------------------------------- local extracts

_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"=>"((?:[^"\\]|\\.)*)"')


def parse_other_tags(text: str | None) -> dict[str, str]:
    """GDAL OSM driver's `other_tags` hstore text as a dict."""
    if not text:
        return {}
    return {k.replace('\\"', '"'): v.replace('\\"', '"') for k, v in _HSTORE.findall(text)}


def is_osm_extract(path: str | os.PathLike) -> bool:
    """Whether `path` names an OSM extract by its extension."""
    return os.fspath(path).lower().endswith(OSM_EXTENSIONS)


def _extract_timestamp(path: Path) -> str | None:
    if path.name.lower().endswith(".pbf"):
        return None
    opener = bz2.open if path.name.lower().endswith(".bz2") else open
    with opener(path, "rb") as handle:
        head = handle.read(4096).decode("utf-8", "replace")
    for pattern in (r'osm_base="([^"]+)"', r'<osm[^>]*\btimestamp="([^"]+)"'):
        match = re.search(pattern, head)
        if match:
            return match.group(1)
    return None


def read_osm_extract(
    path: str | os.PathLike,
    classes: ClassMap,
    bbox: tuple[float, float, float, float] | None = None,
    rules: LabelRules | None = None,
) -> tuple[object, dict]:
    """Label features of a local OSM extract (.osm XML, .osm.bz2, .osm.pbf), optionally within `bbox`.

    Returns:
        (labels GeoDataFrame, info) where info holds `osm_timestamp` (from the XML header, if any;
        PBF files without a replication timestamp give None) and the file's `sha256`.
    """
    import pyogrio
    import pyogrio.errors

    rules = rules or LabelRules()
    rules.overpass_filters(classes)  # same validation of class names as the Overpass path
    source = Path(path)
    if not source.is_file():
        raise InputError(path, "no such OSM extract")
    with tempfile.TemporaryDirectory(prefix="geolabel-osm-") as tmp:
        readable = source
        if source.name.lower().endswith(".bz2"):
            readable = Path(tmp) / source.name[:-4]
            with bz2.open(source, "rb") as packed, open(readable, "wb") as plain:
                shutil.copyfileobj(packed, plain)
        elif source.name.lower().endswith(".pbf") and not source.name.lower().endswith(".osm.pbf"):
            readable = Path(tmp) / (source.stem + ".osm.pbf")
            os.symlink(source.resolve(), readable)
        rows = []
        for layer in ("multipolygons", "lines"):
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="(Non closed ring|organizePolygons)", category=RuntimeWarning)
                    frame = pyogrio.read_dataframe(readable, layer=layer, bbox=bbox, on_invalid="ignore")
            except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
                raise InputError(path, f"not a readable OSM extract ({str(err).splitlines()[0]})") from err
            closed = layer == "multipolygons"
            known = [c for c in frame.columns if c not in ("geometry", "other_tags")]
            for record, geometry in zip(frame[known + (["other_tags"] if "other_tags" in frame else [])].to_dict("records"), frame.geometry):
                if geometry is None or geometry.is_empty:
                    continue
                tags = parse_other_tags(record.pop("other_tags", None))
                tags.update({k: str(v) for k, v in record.items() if v is not None and not (isinstance(v, float) and math.isnan(v)) and k not in ("osm_id", "osm_way_id")})
                found = rules.classify(tags, classes, closed)
                if found is None:
                    continue
                cls, width, tag = found
                if closed and not math.isnan(width):
                    continue  # highway areas (squares, platforms) are not carriageways
                osm_id = record.get("osm_way_id") or record.get("osm_id")
                rows.append(_row(geometry, cls, width, int(osm_id) if osm_id else None, tag, classes))
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return _frame(rows), {"osm_timestamp": _extract_timestamp(source), "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- any vector file


def read_vector_labels(
    path: str | os.PathLike,
    classes: ClassMap,
    class_column: str | None = None,
    default_class: str | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    width_column: str = "width",
    rules: LabelRules | None = None,
) -> tuple[object, dict]:
    """Labels from a vector file (GeoJSON/GeoPackage/Shapefile/GeoParquet/...).

    Args:
        class_column: column holding class names or ids; without it every feature is
            `default_class` (default: the first non-background class).
        bbox: keep only features intersecting this EPSG:4326 box.
        width_column: metres of buffer width for line features (else the road default).
    """
    import geopandas as gpd
    import pyogrio.errors

    rules = rules or LabelRules()
    name = os.fspath(path)
    if "://" not in name and not Path(name).is_file():
        raise InputError(name, "no such label file")
    try:
        if name.lower().endswith((".parquet", ".geoparquet")):
            frame = gpd.read_parquet(name)
        else:
            frame = gpd.read_file(name)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError, OSError) as err:
        raise InputError(name, f"not a readable vector file ({str(err).splitlines()[0]})") from err
    if frame.crs is None:
        raise InputError(name, "has no CRS (unknown coordinate reference system)")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty].to_crs("EPSG:4326")
    if bbox is not None:
        frame = frame[frame.intersects(shapely.box(*bbox))]
    if class_column is not None:
        if class_column not in frame.columns:
            raise InputError(name, f"has no class column {class_column!r} (columns: {', '.join(map(str, frame.columns))})")
        ids = [_class_id(v, classes, name) for v in frame[class_column]]
    else:
        cls = default_class or classes.names[1]
        try:
            ids = [classes.index(cls)] * len(frame)
        except KeyError as err:
            raise InputError("default class", str(err)) from None
    rows = []
    widths = frame[width_column] if width_column in frame.columns else [None] * len(frame)
    osm_ids = frame["osm_id"] if "osm_id" in frame.columns else [None] * len(frame)
    for geometry, cid, width, osm_id in zip(frame.geometry, ids, widths, osm_ids):
        if cid == 0:
            continue
        is_line = geometry.geom_type in ("LineString", "MultiLineString")
        if geometry.geom_type in ("Point", "MultiPoint"):
            continue
        w = float(width) if is_line and width is not None and not _isnan(width) else (rules.default_road_width if is_line else math.nan)
        rows.append(_row(geometry, classes.names[cid], w, int(osm_id) if osm_id is not None and not _isnan(osm_id) else None, "file", classes))
    return _frame(rows), {"osm_timestamp": None}


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _class_id(value, classes: ClassMap, name: str) -> int:
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        cid = int(value)
        if not 0 <= cid < classes.num_classes:
            raise InputError(name, f"class id {cid} is not in 0..{classes.num_classes - 1} ({', '.join(classes.names)})")
        return cid
    try:
        return classes.index(str(value))
    except KeyError as err:
        raise InputError(name, str(err)) from None


def classes_from_names(names: Iterable[str]) -> ClassMap:
    """A ClassMap for these names (background first), with known display colours."""
    from geolabel.classes import BUILDINGS_ROADS

    palette = {"background": (0, 0, 0), "building": (230, 25, 75), "road": (255, 225, 25), "water": (0, 130, 200), "landuse": (60, 180, 75)}
    names = tuple(names)
    if not names or names[0] != "background":
        raise InputError("classes", f"must start with background, got {', '.join(names) or 'nothing'}")
    if len(set(names)) != len(names):
        raise InputError("classes", "names repeat")
    if names == BUILDINGS_ROADS.names:
        return BUILDINGS_ROADS
    extra = [(145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]
    colors = tuple(palette.get(n) or extra[i % len(extra)] for i, n in enumerate(names))
    return ClassMap(names, colors)


# ---------------------------------------------------------------- OSM XML with ids and versions (map updates)

OSM_XML_EXTENSIONS = (".osm", ".osm.bz2", ".osm.gz")


@dataclass(frozen=True)
class OsmNode:
    """A node as an OSM XML file gives it.

    Args:
        version: None when the file carries no metadata for it (e.g. Overpass `out geom`,
            which gives a way's node positions but not the nodes themselves).
        tags: its tags (a modify must write them back, or the upload would delete them).
    """

    id: int
    version: int | None
    lon: float
    lat: float
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OsmBuilding:
    """A building of an OSM XML file: a closed way or a multipolygon relation tagged building.

    Args:
        key: "way/ID" or "relation/ID" (the path of its page on openstreetmap.org).
        version: None when the file carries no metadata.
        geometry: (multi)polygon, EPSG:4326.
        nodes: the distinct nodes of its way(s); empty when the file lacks a member way.
        shared: some node also belongs to another way of the file (moving the node would
            move that way too).
    """

    key: str
    version: int | None
    geometry: BaseGeometry
    tags: dict[str, str]
    nodes: tuple[OsmNode, ...]
    shared: bool


def is_osm_xml(path: str | os.PathLike) -> bool:
    """Whether `path` names an OSM XML file (.osm, .osm.bz2, .osm.gz) by its extension."""
    return os.fspath(path).lower().endswith(OSM_XML_EXTENSIONS)


def _version(element) -> int | None:
    value = element.get("version")
    return int(value) if value not in (None, "", "0") else None


def _deleted(element) -> bool:
    return element.get("action") == "delete" or element.get("visible") == "false"


def _tags(element) -> dict[str, str]:
    return {t.get("k"): t.get("v") for t in element.findall("tag")}


def read_osm_buildings(path: str | os.PathLike) -> list[OsmBuilding]:
    """The buildings of an OSM XML file (JOSM, the API, Overpass `out meta`/`out geom`), with the
    ids and versions an uploadable change needs.

    Closed ways and multipolygon relations whose tags make a building (`LabelRules.classify`)
    are read; node positions come from the `<node>` elements or, for Overpass `out geom`, from
    the coordinates on the `<nd>` elements. Objects marked deleted (JOSM `action="delete"`,
    `visible="false"`) are skipped.
    """
    import gzip
    import xml.etree.ElementTree as ET

    from geolabel.classes import BUILDINGS

    source = Path(path)
    if not source.is_file():
        raise InputError(path, "no such OSM file")
    name = source.name.lower()
    opener = bz2.open if name.endswith(".bz2") else gzip.open if name.endswith(".gz") else open
    nodes: dict[int, OsmNode] = {}
    ways: dict[int, tuple[list[int], dict[str, str], int | None]] = {}
    relations = []
    try:
        with opener(source, "rb") as handle:
            for _, element in ET.iterparse(handle):
                if element.tag not in ("node", "way", "relation"):
                    continue
                if not _deleted(element):
                    if element.tag == "node":
                        nid = int(element.get("id"))
                        nodes[nid] = OsmNode(nid, _version(element), float(element.get("lon")), float(element.get("lat")), _tags(element))
                    elif element.tag == "way":
                        refs = []
                        for nd in element.findall("nd"):
                            refs.append(int(nd.get("ref")))
                            if nd.get("lat") is not None and refs[-1] not in nodes:
                                nodes[refs[-1]] = OsmNode(refs[-1], None, float(nd.get("lon")), float(nd.get("lat")))
                        ways[int(element.get("id"))] = (refs, _tags(element), _version(element))
                    else:
                        members = [
                            (m.get("type"), int(m.get("ref")), m.get("role") or "outer",
                             [(float(nd.get("lon")), float(nd.get("lat"))) for nd in m.findall("nd")])
                            for m in element.findall("member")
                        ]
                        relations.append((int(element.get("id")), members, _tags(element), _version(element)))
                element.clear()
    except (ET.ParseError, OSError, EOFError, ValueError, TypeError) as err:
        raise InputError(path, f"not a readable OSM XML file ({str(err).splitlines()[0]})") from err
    users: dict[int, set[int]] = {}
    for wid, (refs, _, _) in ways.items():
        for ref in refs:
            users.setdefault(ref, set()).add(wid)
    rules = LabelRules()

    def building_nodes(way_ids: list[int]) -> tuple[tuple[OsmNode, ...], bool]:
        ids = list(dict.fromkeys(ref for wid in way_ids for ref in ways[wid][0]))
        shared = any(users[ref] - set(way_ids) for ref in ids)
        return tuple(nodes[ref] for ref in ids), shared

    out = []
    for wid, (refs, tags, version) in ways.items():
        closed = len(refs) >= 4 and refs[0] == refs[-1]
        if not closed or rules.classify(tags, BUILDINGS, True) is None or any(ref not in nodes for ref in refs):
            continue
        geometry = _polygonal(Polygon([(nodes[ref].lon, nodes[ref].lat) for ref in refs]))
        if not geometry.is_empty:
            out.append(OsmBuilding(f"way/{wid}", version, geometry, tags, *building_nodes([wid])))
    for rid, members, tags, version in relations:
        if tags.get("type") != "multipolygon" or rules.classify(tags, BUILDINGS, True) is None:
            continue
        lines: dict[str, list] = {"outer": [], "inner": []}
        complete = True
        for kind, ref, role, inline in members:
            if kind != "way":
                continue
            if ref in ways and all(r in nodes for r in ways[ref][0]):
                coords = [(nodes[r].lon, nodes[r].lat) for r in ways[ref][0]]
            else:
                coords, complete = inline, False
            lines["inner" if role == "inner" else "outer"].append(coords)
        outer, inner = _rings_to_area(lines["outer"]), _rings_to_area(lines["inner"])
        geometry = _polygonal(outer.difference(inner) if not inner.is_empty else outer)
        if geometry.is_empty:
            continue
        way_ids = [ref for kind, ref, _, _ in members if kind == "way"]
        found = building_nodes(way_ids) if complete else ((), False)
        out.append(OsmBuilding(f"relation/{rid}", version, geometry, tags, *found))
    return out

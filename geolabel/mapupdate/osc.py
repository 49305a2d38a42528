"""osmChange (.osc, API 0.6) output: create new buildings, move shifted ones."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable

import shapely

from geolabel.atomic import write_bytes_atomic


def _rings(geom) -> list:
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    return [p.exterior for p in polys if not p.is_empty]


def build_osc(
    new: Iterable[object],
    shifted: Iterable[tuple[object, object, int | None]],
    source: str = "geolabel",
    generator: str = "geolabel",
) -> ET.Element:
    """The osmChange tree.

    Args:
        new: geometries (EPSG:4326) of buildings to create: negative node and way ids,
            tags `building=yes` and `source`.
        shifted: (osm_way_id, geometry in EPSG:4326, version or None) of existing
            buildings to move. The way is modified to reference new nodes at the corrected
            positions (its old nodes are left for the editor's validator to clean up);
            `version` is written when known, as the API requires for uploads.
        source: value of the `source` tag.
    """
    root = ET.Element("osmChange", version="0.6", generator=generator)
    create = ET.SubElement(root, "create")
    modify = ET.Element("modify")
    next_id = [-1]

    def node_ring(ring) -> list[int]:
        coords = list(ring.coords)[:-1] if ring.is_closed else list(ring.coords)
        refs = []
        for lon, lat in coords:
            nid = next_id[0]
            next_id[0] -= 1
            ET.SubElement(create, "node", id=str(nid), version="0", lat=f"{lat:.8f}", lon=f"{lon:.8f}")
            refs.append(nid)
        return refs + refs[:1]

    def way(parent: ET.Element, wid: int, refs: list[int], tags: dict[str, str], version: int | None) -> None:
        attrs = {"id": str(wid), "version": str(version if version is not None else 0)}
        w = ET.SubElement(parent, "way", attrs)
        for r in refs:
            ET.SubElement(w, "nd", ref=str(r))
        for k, v in tags.items():
            ET.SubElement(w, "tag", k=k, v=v)

    ways = []
    for geom in new:
        for ring in _rings(geom):
            refs = node_ring(ring)
            ways.append((refs, {"building": "yes", "source": source}))
    for refs, tags in ways:
        way(create, next_id[0], refs, tags, None)
        next_id[0] -= 1
    for way_id, geom, version in shifted:
        if way_id is None or shapely.is_empty(geom):
            continue
        ring = _rings(geom)[0]
        refs = node_ring(ring)
        way(modify, int(way_id), refs, {"building": "yes", "source": source}, version)
    if len(modify):
        root.append(modify)
    return root


def write_osc(path: str | os.PathLike, root: ET.Element) -> None:
    """Write an osmChange tree atomically (UTF-8, with XML declaration)."""
    ET.indent(root)
    write_bytes_atomic(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))


def osc_problems(path: str | os.PathLike) -> list[str]:
    """Structural problems of an .osc file (empty when it is valid osmChange 0.6)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return [f"not XML: {err}"]
    problems = []
    if root.tag != "osmChange" or root.get("version") != "0.6":
        problems.append("root is not <osmChange version='0.6'>")
    nodes = set()
    for block in root:
        if block.tag not in ("create", "modify", "delete"):
            problems.append(f"unexpected element <{block.tag}>")
        for el in block:
            if el.tag not in ("node", "way", "relation") or el.get("id") is None or el.get("version") is None:
                problems.append(f"bad element <{el.tag}> in <{block.tag}>")
                continue
            if block.tag == "create" and int(el.get("id")) >= 0:
                problems.append(f"created {el.tag} {el.get('id')} has a non-negative id")
            if el.tag == "node":
                if el.get("id") in nodes:
                    problems.append(f"node {el.get('id')} defined twice")
                nodes.add(el.get("id"))
                lat, lon = float(el.get("lat")), float(el.get("lon"))
                if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                    problems.append(f"node {el.get('id')} out of range")
            if el.tag == "way":
                refs = [nd.get("ref") for nd in el.findall("nd")]
                if len(refs) < 4 or refs[0] != refs[-1]:
                    problems.append(f"way {el.get('id')} is not a closed ring")
                missing = [r for r in refs if int(r) < 0 and r not in nodes]
                if missing:
                    problems.append(f"way {el.get('id')} references undefined nodes {missing[:3]}")
    return problems

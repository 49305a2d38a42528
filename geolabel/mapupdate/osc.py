"""OSM XML outputs of a map update.

- `changes.osc` (osmChange 0.6, uploadable): new buildings as <create> (negative ids, tags
  `building=yes` and `source`); a shifted building as a <modify> of its existing nodes'
  positions (same ids, their versions and tags), the way itself unchanged.
- `changes.osm` (JOSM OSM XML, for review): corrections that cannot be uploaded as they are
  (the nodes or their versions are unknown, or a node is shared with another way), as
  negative-id ways tagged with the building they correct; `upload="false"` makes JOSM warn
  before anyone uploads them as new objects.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from geolabel.atomic import write_bytes_atomic
from geolabel.data.osm import OsmNode


def _rings(geom) -> list:
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    return [p.exterior for p in polys if not p.is_empty]


class _NegativeIds:
    """Writes polygons as new nodes and ways with ids -1, -2, ... into a parent element."""

    def __init__(self, parent: ET.Element, attrs: dict[str, str]):
        self.parent, self.attrs, self.next = parent, attrs, -1

    def _id(self) -> int:
        self.next -= 1
        return self.next + 1

    def polygon(self, geom, tags: dict[str, str]) -> None:
        """One closed way per exterior ring of `geom` (EPSG:4326), each with `tags`."""
        for ring in _rings(geom):
            refs = []
            for lon, lat in list(ring.coords)[:-1]:
                refs.append(self._id())
                ET.SubElement(self.parent, "node", id=str(refs[-1]), **self.attrs, lat=f"{lat:.8f}", lon=f"{lon:.8f}")
            way = ET.SubElement(self.parent, "way", id=str(self._id()), **self.attrs)
            for ref in refs + refs[:1]:
                ET.SubElement(way, "nd", ref=str(ref))
            for k, v in tags.items():
                ET.SubElement(way, "tag", k=k, v=v)


def build_osc(new: Iterable[object], moved: Iterable[OsmNode], source: str = "geolabel",
              generator: str = "geolabel") -> ET.Element:
    """The osmChange tree.

    Args:
        new: geometries (EPSG:4326) of buildings to create, tagged `building=yes` and `source`.
        moved: existing nodes at their corrected positions (ids, versions and tags as they are
            in OSM): each becomes a <modify> of that node.
    """
    root = ET.Element("osmChange", version="0.6", generator=generator)
    create = ET.SubElement(root, "create")
    ids = _NegativeIds(create, {"version": "0"})
    for geom in new:
        ids.polygon(geom, {"building": "yes", "source": source})
    modify = ET.Element("modify")
    for node in moved:
        if node.version is None or node.id <= 0:
            raise ValueError(f"node {node.id} cannot be modified without its OSM id and version")
        el = ET.SubElement(modify, "node", id=str(node.id), version=str(node.version),
                           lat=f"{node.lat:.8f}", lon=f"{node.lon:.8f}")
        for k, v in node.tags.items():
            ET.SubElement(el, "tag", k=k, v=v)
    if len(modify):
        root.append(modify)
    return root


def build_review_osm(corrections: Iterable[tuple[object, dict[str, str]]], generator: str = "geolabel") -> ET.Element:
    """A JOSM OSM XML tree of (geometry EPSG:4326, tags) as new (negative-id) ways, not for upload."""
    root = ET.Element("osm", version="0.6", generator=generator, upload="false")
    ids = _NegativeIds(root, {"action": "modify", "visible": "true"})
    for geom, tags in corrections:
        ids.polygon(geom, tags)
    return root


def write_osc(path: str | os.PathLike, root: ET.Element) -> None:
    """Write an osmChange (or OSM XML) tree atomically (UTF-8, with XML declaration)."""
    ET.indent(root)
    write_bytes_atomic(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))


def osc_problems(path: str | os.PathLike) -> list[str]:
    """Structural problems of an .osc file (empty when it is valid, uploadable osmChange 0.6)."""
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
            if block.tag != "create" and (int(el.get("id")) <= 0 or int(el.get("version")) <= 0):
                problems.append(f"{block.tag} of {el.tag} {el.get('id')} without an OSM id and version")
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

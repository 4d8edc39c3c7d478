"""Make uv's CycloneDX export of the image's environment reproducible and true to what is
installed: the packages whose marker this interpreter does not meet (another platform's, and
those the lock overrides away with `sys_platform == 'never'`) dropped, the serial number
derived from uv.lock's content and the time from SOURCE_DATE_EPOCH, so two builds of one
commit write the same bytes. Run in the image's build (Dockerfile)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from packaging.markers import Marker

MARKER = "uv:package:marker"


def installed_here(component: dict[str, object]) -> bool:
    """Whether the component's marker (if any) holds for this interpreter and platform."""
    for prop in component.get("properties", []):  # type: ignore[attr-defined]
        if prop["name"] == MARKER and not Marker(prop["value"]).evaluate():
            return False
    return True


def normalise(bom: dict[str, object], lock: bytes, epoch: int) -> dict[str, object]:
    components = [
        component
        for component in bom.get("components", [])  # type: ignore[attr-defined]
        if installed_here(component)
    ]
    kept = {component["bom-ref"] for component in components}
    dependencies = [
        {**entry, "dependsOn": [ref for ref in entry.get("dependsOn", []) if ref in kept]}
        for entry in bom.get("dependencies", [])  # type: ignore[attr-defined]
        if entry["ref"] in kept or entry["ref"] == bom["metadata"]["component"]["bom-ref"]  # type: ignore[index]
    ]
    metadata = dict(bom["metadata"])  # type: ignore[arg-type]
    metadata["timestamp"] = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "switchyard-lock:" + hashlib.sha256(lock).hexdigest())
    return {
        **bom,
        "serialNumber": f"urn:uuid:{serial}",
        "metadata": metadata,
        "components": components,
        "dependencies": dependencies,
    }


def main() -> None:
    source, lock, target = (Path(arg) for arg in sys.argv[1:4])
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    bom = normalise(json.loads(source.read_text()), lock.read_bytes(), epoch)
    target.write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

"""The live model repository: the bundles under one directory, served by name and version, loaded
and unloaded while the server runs (Triton's model repository extension; routes.repository).

- A bundle is a directory holding manifest.json, one or two levels below the root
  (`ROOT/digits-v2/` or `ROOT/digits/2/`); its manifest names the model and its version.
- `load(name)` serves every version of `name` found under the root: each bundle's checksums are
  verified, new or changed versions are opened and warmed up off to the side, then the served set
  is switched in one step (the highest version becomes the default). Versions no longer on disk are
  dropped after the switch, draining as in `unload`. A load that fails changes nothing.
- `unload(name)` stops routing to the model (new requests: 404), then lets its queued and running
  work finish, up to `drain_timeout_s` (what is left then gets 503), and drops it.
- One load or unload at a time.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import Any

from export.manifest import MANIFEST_FILE, BundleError, Manifest, load_bundle, read_manifest
from service.engine import Engine
from service.errors import BadRequest, NotFound, Unavailable
from service.loader import measure_overhead, open_model, warm_up
from service.models import ServedModel
from service.runtime import SessionFactory

log = logging.getLogger(__name__)
READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


def discover(root: Path | None) -> list[Path]:
    """The bundle directories under `root`, one or two levels down (resolved, sorted)."""
    if root is None:
        return []
    found = {p.parent.resolve() for pattern in ("*/", "*/*/") for p in root.glob(pattern + MANIFEST_FILE)}
    return sorted(found)


async def open_served(engine: Engine, path: Path, manifest: Manifest, factory: SessionFactory) -> ServedModel:
    """A model ready to serve, not yet served: sessions open, every level warmed up on its own
    inference thread and its batcher started, the overhead measured."""
    settings = engine.settings
    model = await asyncio.to_thread(open_model, path, manifest, settings, engine.metrics, factory)
    shape = manifest.input.shape[1:]
    for lv in model.levels:
        await lv.batcher.call(partial(warm_up, lv, shape, settings.warmup_runs, settings.max_batch_size))
        lv.batcher.start()
        log.info("%s v%s level %s warm: %.3f ms at batch 1", model.name, manifest.version, lv.name,
                 lv.profile.predict_ms(1))  # fmt: skip
    await measure_overhead(model)
    return model


async def drain(engine: Engine, models: list[ServedModel]) -> None:
    """Let the queued and running work of `models` (no longer routed to) finish, then stop them."""
    timeout = engine.settings.drain_timeout_s
    await asyncio.gather(*(lv.batcher.close(timeout) for m in models for lv in m.levels))


class Repository:
    def __init__(self, engine: Engine, root: Path | None, factory: SessionFactory) -> None:
        self.engine, self.root, self.factory = engine, root, factory
        self.busy: dict[str, str] = {}  # model name -> LOADING / UNLOADING while that runs
        self.reasons: dict[str, str] = {}  # model name -> why its last load failed
        self._lock: asyncio.Lock | None = None

    def _bundles(self) -> list[tuple[Path, Manifest | BundleError]]:
        out: list[tuple[Path, Manifest | BundleError]] = []
        for path in discover(self.root):
            try:
                out.append((path, read_manifest(path)))
            except BundleError as exc:
                out.append((path, exc))
        return out

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every bundle under the root and every served model version, with its state."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for path, found in self._bundles():
            if isinstance(found, BundleError):
                rows[(path.name, "")] = {"name": path.name, "version": "", "state": UNAVAILABLE,
                                         "reason": str(found)}  # fmt: skip
                continue
            served = self.engine.versions.get(found.name, {}).get(found.version)
            state = READY if served is not None and served.path == path else UNAVAILABLE
            state = self.busy.get(found.name, state)
            reason = "" if state != UNAVAILABLE else self.reasons.get(found.name, "not loaded")
            rows[(found.name, found.version)] = {"name": found.name, "version": found.version,
                                                 "state": state, "reason": reason}  # fmt: skip
        for name, versions in self.engine.versions.items():
            for version in versions:
                state = self.busy.get(name, READY)
                rows.setdefault(
                    (name, version), {"name": name, "version": version, "state": state, "reason": ""}
                )
        listed = sorted(rows.values(), key=lambda r: (r["name"], int(r["version"] or 0)))
        return [r for r in listed if r["state"] == READY] if ready_only else listed

    async def load(self, name: str) -> list[str]:
        """Serve every version of `name` under the root (see the module docstring); its versions."""
        async with self._locked():
            found = [(p, m) for p, m in self._bundles() if isinstance(m, Manifest) and m.name == name]
            if not found:
                raise NotFound(f"no bundle for model {name!r} under the repository {self.root}")
            versions = [m.version for _, m in found]
            if len(set(versions)) != len(versions):
                raise BadRequest(f"model {name!r}: two bundles under {self.root} have the same version")
            current = self.engine.versions.get(name, {})
            new: dict[str, ServedModel] = {}
            self.busy[name] = LOADING
            try:
                for path, _ in found:
                    manifest = await asyncio.to_thread(load_bundle, path)  # every checksum
                    old = current.get(manifest.version)
                    if old is not None and old.path == path and old.manifest == manifest:
                        new[manifest.version] = old
                    else:
                        new[manifest.version] = await open_served(self.engine, path, manifest, self.factory)
            except Exception as exc:
                await drain(self.engine, [m for v, m in new.items() if current.get(v) is not m])
                self.reasons[name] = f"load failed: {exc}"
                raise BadRequest(f"failed to load model {name!r}: {exc}") from exc
            finally:
                self.busy.pop(name, None)
            self.reasons.pop(name, None)
            self.engine.set_versions(name, new)  # the switch: one assignment, no await in between
            log.info("model %s: serving versions %s", name, ", ".join(sorted(new, key=int)))
            await drain(self.engine, [m for v, m in current.items() if new.get(v) is not m])
            return sorted(new, key=int)

    async def unload(self, name: str) -> None:
        async with self._locked():
            served = list(self.engine.versions.get(name, {}).values())
            if not served:
                raise NotFound(f"model {name!r} is not loaded")
            self.busy[name] = UNLOADING
            try:
                self.engine.set_versions(name, {})
                await drain(self.engine, served)
            finally:
                self.busy.pop(name, None)
            self.reasons[name] = "unloaded"
            log.info("model %s unloaded", name)

    def _locked(self) -> asyncio.Lock:
        """The one-at-a-time lock; 503 before the first load finished or once draining."""
        if not self.engine.ready or self.engine.draining:
            raise Unavailable("the server is loading or draining; retry later", retry_after_s=5)
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

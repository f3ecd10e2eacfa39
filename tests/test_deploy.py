"""deploy/deploy.py: the exact gcloud commands it prints and runs, and what .gcloudignore ships."""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy" / "deploy.py"
PROJECT = "shop-recs-test"
DATABASE_URL = "postgresql://recs@10.1.2.3:5432/events"
MODEL_STORE_URL = f"gs://{PROJECT}-recommender-models/models"
ENTRY_POINTS = {"webhook", "recommend", "collect", "train", "healthz"}  # HTTP; webhook_pubsub with a topic


def deploy(*flags: str, **env: str) -> subprocess.CompletedProcess:
    """deploy.py as a process, with only the environment given (plus PATH)."""
    environment = {"PATH": env.pop("PATH", os.environ["PATH"]), "PROJECT": PROJECT, "DATABASE_URL": DATABASE_URL,
                   **env}
    return subprocess.run([sys.executable, str(DEPLOY), *flags], env={k: v for k, v in environment.items() if v},
                          capture_output=True, text=True, cwd=ROOT)


def dry_run(*flags: str, **env: str) -> str:
    result = deploy("--dry-run", *flags, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def commands(script: str) -> list[list[str]]:
    """The script's commands that start a line, as words; continuation lines joined."""
    lines = script.replace(" \\\n    ", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip().startswith("gcloud ")]


def flags(words: list[str]) -> dict[str, str]:
    """--name=value → {"--name": value}; a bare --flag → "" (each flag appears once)."""
    found = [word.partition("=") for word in words if word.startswith("--")]
    assert len({name for name, _, _ in found}) == len(found), f"a flag is repeated in {words}"
    return {name: value for name, _, value in found}


def gcloud_map(value: str) -> dict[str, str]:
    """KEY=VALUE,... or gcloud's escaped form ^DELIM^KEY=VALUE<DELIM>... (used when a value has a comma)."""
    delimiter = ","
    if value.startswith("^"):
        delimiter, value = value[1:].split("^", 1)
    return dict(pair.split("=", 1) for pair in value.split(delimiter)) if value else {}


def deployed(script: str) -> dict[str, dict[str, str]]:
    """Function name → its deploy command's flags."""
    return {words[3]: flags(words) for words in commands(script) if words[:3] == ["gcloud", "functions", "deploy"]}


# --- the functions ---------------------------------------------------------------------------


def test_dry_run_deploys_each_entry_point_as_a_gen2_python311_http_function():
    # Act
    functions = deployed(dry_run())

    # Assert
    assert set(functions) == ENTRY_POINTS
    for name, flag in functions.items():
        assert flag["--entry-point"] == name
        assert (flag["--gen2"], flag["--runtime"], flag["--trigger-http"]) == ("", "python311", "")
        assert (flag["--project"], flag["--region"]) == (PROJECT, "us-central1")
        assert flag["--source"] == str(ROOT)
        assert "--allow-unauthenticated" in flag  # train included: it checks its own bearer token


def test_dry_run_sizes_each_function_for_its_work():
    # Act
    functions = deployed(dry_run())

    # Assert
    assert {name: flag["--memory"] for name, flag in functions.items()} == {
        "webhook": "256Mi", "recommend": "512Mi", "collect": "256Mi", "train": "2Gi", "healthz": "256Mi"}
    assert functions["recommend"]["--min-instances"] == "1"
    assert (functions["train"]["--max-instances"], functions["train"]["--timeout"]) == ("1", "1800s")
    for flag in functions.values():  # gunicorn serves as many requests at once as Cloud Run sends
        assert gcloud_map(flag["--set-env-vars"])["THREADS"] == flag["--concurrency"]
        assert int(flag["--concurrency"]) == 1 or float(flag["--cpu"]) >= 1  # Cloud Run's rule for concurrency


def test_dry_run_gives_stores_to_the_functions_and_secrets_only_to_those_that_need_them():
    # Act
    functions = deployed(dry_run())

    # Assert
    for name in ("webhook", "recommend", "collect", "train"):
        env_vars = gcloud_map(functions[name]["--set-env-vars"])
        env_vars.pop("MODEL_MEMORY_MIB", None)  # recommend's: its own test
        env_vars.pop("MALLOC_ARENA_MAX", None)  # recommend's: its own test
        env_vars.pop("TRAIN_BUDGET_SECONDS", None)  # train's: its own test
        assert env_vars == {"EVENT_STORE_URL": DATABASE_URL, "MODEL_STORE_URL": MODEL_STORE_URL,
                            "THREADS": functions[name]["--concurrency"], "OPENBLAS_NUM_THREADS": "1"}
    assert gcloud_map(functions["healthz"]["--set-env-vars"]) == {"THREADS": functions["healthz"]["--concurrency"],
                                                                  "OPENBLAS_NUM_THREADS": "1"}
    secrets = {name: gcloud_map(flag.get("--set-secrets", "")) for name, flag in functions.items()}
    assert secrets == {
        "webhook": {"SHOPIFY_API_SECRET": "shopify-api-secret:latest"},
        "recommend": {"SHOPIFY_API_SECRET": "shopify-api-secret:latest"},  # verifies app proxy signatures
        "collect": {},
        "train": {"TRAIN_TOKEN": "train-token:latest"},
        "healthz": {},
    }


def test_preload_shops_reach_the_recommend_function_only():
    # Act
    functions = deployed(dry_run("--preload-shops", "a.myshopify.com,b.myshopify.com"))

    # Assert
    assert gcloud_map(functions["recommend"]["--set-env-vars"])["PRELOAD_SHOPS"] == "a.myshopify.com,b.myshopify.com"
    for name in ("webhook", "collect", "train", "healthz"):
        assert "PRELOAD_SHOPS" not in gcloud_map(functions[name]["--set-env-vars"])


def test_recommend_instances_keep_models_within_a_share_of_their_memory_unless_told():
    # Act
    default = deployed(dry_run("--with-app"))
    bigger = deployed(dry_run(RECOMMEND_MEMORY="1Gi"))
    told = deployed(dry_run("--model-memory-mib", "300"))
    from_env = deployed(dry_run(MODEL_MEMORY_MIB="200.5"))
    left_to_gcloud = deployed(dry_run(RECOMMEND_MEMORY="2048"))

    # Assert
    def budget(functions, name="recommend"):
        return gcloud_map(functions[name]["--set-env-vars"]).get("MODEL_MEMORY_MIB")

    assert (budget(default), budget(default, "app")) == ("230", "409")  # 45% of 512Mi; 20% of 2Gi, which also trains
    assert budget(bigger) == "460"
    assert (budget(told), budget(from_env)) == ("300", "200.5")
    assert budget(left_to_gcloud) is None and left_to_gcloud["recommend"]["--memory"] == "2048"
    for name in ("webhook", "collect", "train", "healthz"):
        assert budget(default, name) is None


def test_the_functions_that_keep_models_get_two_malloc_arenas():
    functions = deployed(dry_run("--with-app"))

    arenas = {name: gcloud_map(flags["--set-env-vars"]).get("MALLOC_ARENA_MAX") for name, flags in functions.items()
              if "--set-env-vars" in flags}

    assert arenas == {"webhook": None, "recommend": "2", "collect": None, "train": None, "healthz": None, "app": "2"}


def test_functions_that_train_start_shops_within_five_sixths_of_their_time():
    # Act
    default = deployed(dry_run("--with-app"))
    shorter = deployed(dry_run("--with-app", TRAIN_TIMEOUT="20m", APP_TIMEOUT="600"))
    longer = deployed(dry_run("--with-app", TRAIN_TIMEOUT="1h", APP_TIMEOUT="55m30s"))

    # Assert
    def budget(functions, name):
        return gcloud_map(functions[name]["--set-env-vars"]).get("TRAIN_BUDGET_SECONDS")

    assert (budget(default, "train"), budget(default, "app")) == ("1500", "1500")  # 1800 s × 5/6
    assert (budget(shorter, "train"), budget(shorter, "app")) == ("1000", "500")  # 1,200 × 5/6; 600 × 5/6
    # train: Cloud Scheduler, which calls it, waits 1800 s at most; app: 3,330 × 5/6
    assert (budget(longer, "train"), budget(longer, "app")) == ("1500", "2775")
    assert (longer["train"]["--timeout"], longer["app"]["--timeout"]) == ("1h", "55m30s")
    for name in ("webhook", "recommend", "collect", "healthz"):
        assert budget(default, name) is None


def test_a_training_timeout_that_is_not_a_duration_fails_naming_it():
    result = deploy("--dry-run", TRAIN_TIMEOUT="half an hour")

    assert result.returncode != 0
    assert "TRAIN_TIMEOUT must be a duration such as 1800s, 30m or 1h; got 'half an hour'" in result.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"APP_TIMEOUT": "1h30m"}, "APP_TIMEOUT must be from 1 to 3600 s for this function (Cloud Functions' limit for an"
                               " HTTP function); got '1h30m'"),
    ({"TRAIN_TIMEOUT": "0s"}, "TRAIN_TIMEOUT must be from 1 to 3600 s"),
])
def test_a_timeout_cloud_functions_would_refuse_stops_the_script_naming_it(env, message):
    result = deploy("--dry-run", "--with-app", **env)

    assert result.returncode != 0 and message in result.stderr


@pytest.mark.parametrize(("flags", "env", "message"), [
    (("--model-memory-mib", "0"), {}, "MODEL_MEMORY_MIB must be a number of MiB > 0, got 0"),
    (("--model-memory-mib", "inf"), {}, "MODEL_MEMORY_MIB must be a number of MiB > 0, got inf"),
    ((), {"MODEL_MEMORY_MIB": "lots"}, "MODEL_MEMORY_MIB must be a number, got 'lots'"),
])
def test_a_bad_model_memory_fails_naming_it(flags, env, message):
    result = deploy("--dry-run", *flags, **env)

    assert result.returncode != 0 and message in result.stderr


def test_dry_run_creates_the_scheduler_job_that_posts_train_with_the_bearer_token():
    # Act
    script = dry_run()

    # Assert
    (create,) = [words for words in commands(script) if words[:4] == ["gcloud", "scheduler", "jobs", "create"]]
    assert create[4:6] == ["http", "recommender-train"]
    assert flags(create) == {
        "--project": PROJECT, "--location": "us-central1", "--schedule": "0 3 * * *", "--time-zone": "Etc/UTC",
        "--uri": f"https://us-central1-{PROJECT}.cloudfunctions.net/train", "--http-method": "POST",
        "--headers": "Authorization=Bearer ${train_token}", "--attempt-deadline": "1800s", "--quiet": "",
    }
    joined = script.replace(" \\\n    ", " ")
    assert f'train_token="$(gcloud secrets versions access latest --secret=train-token --project={PROJECT})"' in joined
    assert joined.index("train_token=") < joined.index("gcloud scheduler jobs create")
    assert joined.index("gcloud functions deploy train") < joined.index("gcloud scheduler jobs create")


def test_the_printed_script_is_valid_bash(tmp_path):
    # Arrange
    script = tmp_path / "deploy.sh"
    script.write_text(dry_run("--with-app", "--create-bucket", "--pubsub-topic=shop-events"))

    # Act / Assert
    subprocess.run(["bash", "-n", str(script)], check=True)


# --- parameters --------------------------------------------------------------------------------


def test_flags_win_over_the_environment_and_the_environment_over_defaults():
    # Act
    script = dry_run("--region=asia-east1", "--name-prefix=reco-", "--bucket=shared-models",
                     REGION="europe-west1", RECOMMEND_MEMORY="1Gi", WEBHOOK_CONCURRENCY="32",
                     TRAIN_SCHEDULE="30 2 * * 1", SERVICE_ACCOUNT=f"recs@{PROJECT}.iam.gserviceaccount.com")
    functions = deployed(script)

    # Assert
    assert set(functions) == {f"reco-{name}" for name in ENTRY_POINTS}
    assert {flag["--region"] for flag in functions.values()} == {"asia-east1"}
    assert functions["reco-recommend"]["--memory"] == "1Gi"
    webhook = functions["reco-webhook"]
    assert (webhook["--concurrency"], gcloud_map(webhook["--set-env-vars"])["THREADS"]) == ("32", "32")
    assert gcloud_map(functions["reco-train"]["--set-env-vars"])["MODEL_STORE_URL"] == "gs://shared-models/models"
    assert {flag["--service-account"] for flag in functions.values()} == {f"recs@{PROJECT}.iam.gserviceaccount.com"}
    (create,) = [words for words in commands(script) if words[:4] == ["gcloud", "scheduler", "jobs", "create"]]
    assert flags(create)["--uri"] == f"https://asia-east1-{PROJECT}.cloudfunctions.net/reco-train"
    assert flags(create)["--schedule"] == "30 2 * * 1"


def test_a_database_url_from_secret_manager_never_appears_in_the_commands():
    # Act
    functions = deployed(dry_run(DATABASE_URL="", DATABASE_URL_SECRET="events-db-url"))

    # Assert
    for name in ("webhook", "recommend", "collect", "train"):
        assert "EVENT_STORE_URL" not in gcloud_map(functions[name]["--set-env-vars"])
        assert gcloud_map(functions[name]["--set-secrets"])["EVENT_STORE_URL"] == "events-db-url:latest"


def test_an_env_value_with_a_comma_uses_gcloud_delimiter_escaping():
    # Arrange
    url = "postgresql://recs@db-a:5432,db-b:5432/events"

    # Act
    functions = deployed(dry_run(DATABASE_URL=url))

    # Assert: ',' and '@' are both in the URL, so '|' separates
    expected = (f"^|^EVENT_STORE_URL={url}|MODEL_STORE_URL={MODEL_STORE_URL}|THREADS=1|OPENBLAS_NUM_THREADS=1"
                "|TRAIN_BUDGET_SECONDS=1500")
    assert functions["train"]["--set-env-vars"] == expected


def test_app_bucket_and_topic_only_when_asked():
    # Act
    plain = dry_run()
    everything = dry_run("--with-app", "--create-bucket", "--pubsub-topic=shop-events")

    # Assert
    assert "gcloud storage buckets" not in plain and "gcloud pubsub" not in plain
    assert set(deployed(everything)) == ENTRY_POINTS | {"app", "webhook_pubsub"}
    pubsub = deployed(everything)["webhook_pubsub"]
    assert pubsub["--trigger-topic"] == "shop-events" and "--trigger-http" not in pubsub
    app = deployed(everything)["app"]
    assert gcloud_map(app["--set-secrets"]) == {"SHOPIFY_API_SECRET": "shopify-api-secret:latest",
                                                "TRAIN_TOKEN": "train-token:latest"}
    created = [words for words in commands(everything) if "create" in words[:4]]
    assert ["gcloud", "pubsub", "topics", "create", "shop-events", f"--project={PROJECT}"] in created
    (bucket,) = [words for words in created if words[:3] == ["gcloud", "storage", "buckets"]]
    assert bucket[4] == f"gs://{PROJECT}-recommender-models"
    assert {"--uniform-bucket-level-access", "--public-access-prevention"} <= set(flags(bucket))


def test_webhook_pubsub_is_deployed_with_retries_so_that_a_store_failure_is_redelivered():
    # Regression: without --retry, Cloud Functions drops the event a failed invocation was given, so a delivery
    # that raised because the event store was down was lost instead of redelivered by Pub/Sub.
    # Act
    functions = deployed(dry_run("--pubsub-topic=shop-events"))

    # Assert
    assert "--retry" in functions["webhook_pubsub"]
    assert not [name for name, flag in functions.items() if "--retry" in flag and name != "webhook_pubsub"]


CPU_RULE = "must be 1, 2, 4, 6 or 8 vCPUs, or 0.08 to 1 in steps of 0.001"


@pytest.mark.parametrize("env,message,status", [
    ({"PROJECT": ""}, "PROJECT is not set", 2),
    ({"PROJECT": "Not A Project"}, "PROJECT must be a Google Cloud project id", 2),
    ({"DATABASE_URL": ""}, "DATABASE_URL is not set", 2),
    ({"BUCKET": "Bad_Bucket"}, "BUCKET must be a Cloud Storage bucket name", 2),
    # Sizes Cloud Run would refuse, stopped before any command runs.
    ({"RECOMMEND_CPU": "0.167"}, "RECOMMEND_CONCURRENCY must be 1 when RECOMMEND_CPU is below 1 (Cloud Run serves one"
                                 " request at a time on part of a vCPU); got 8", 1),
    ({"RECOMMEND_CPU": "0.333", "RECOMMEND_CONCURRENCY": "1", "RECOMMEND_MEMORY": "1Gi"},
     "RECOMMEND_MEMORY of 1Gi needs RECOMMEND_CPU of at least 0.5; got 0.333", 1),
    ({"TRAIN_CPU": "0.5", "TRAIN_MEMORY": "2Gi"}, "TRAIN_MEMORY of 2Gi needs TRAIN_CPU of at least 1; got 0.5", 1),
    ({"WEBHOOK_CPU": "1.5"}, f"WEBHOOK_CPU {CPU_RULE}; got '1.5'", 1),
    ({"WEBHOOK_CPU": "0.05"}, f"WEBHOOK_CPU {CPU_RULE}", 1),
    ({"WEBHOOK_CPU": "0.1234"}, f"WEBHOOK_CPU {CPU_RULE}", 1),
    ({"WEBHOOK_CPU": "one"}, f"WEBHOOK_CPU {CPU_RULE}", 1),
    # Regression: RECOMMEND_MIN_INSTANCES, read first as --recommend-min-instances's default, stopped with a traceback.
    ({"RECOMMEND_MIN_INSTANCES": "two"}, "RECOMMEND_MIN_INSTANCES must be an integer, got 'two'", 1),
    # Regression: only the rules below 1 vCPU were checked, so these reached gcloud after the functions before them
    # had been deployed (Cloud Run: above 4, 8, 16, 24 GiB at least 2, 4, 6, 8 vCPUs; 4 vCPUs from 2 GiB, 6 and 8 from
    # 4 GiB; at most 8 vCPUs and 32 GiB).
    ({"RECOMMEND_MEMORY": "8Gi"}, "RECOMMEND_MEMORY of 8Gi needs RECOMMEND_CPU of at least 2; got 1", 1),
    ({"TRAIN_MEMORY": "16Gi"}, "TRAIN_MEMORY of 16Gi needs TRAIN_CPU of at least 4; got 2", 1),
    ({"TRAIN_MEMORY": "48Gi", "TRAIN_CPU": "8"}, "TRAIN_MEMORY must be at most 32Gi; got '48Gi'", 1),
    ({"WEBHOOK_CPU": "4"}, "WEBHOOK_CPU of 4 needs WEBHOOK_MEMORY of at least 2Gi; got 256Mi", 1),
    ({"TRAIN_CPU": "6", "TRAIN_MEMORY": "2Gi"}, "TRAIN_CPU of 6 needs TRAIN_MEMORY of at least 4Gi; got 2Gi", 1),
    ({"TRAIN_CPU": "3"}, f"TRAIN_CPU {CPU_RULE}; got '3'", 1),
    ({"TRAIN_CPU": "16", "TRAIN_MEMORY": "32Gi"}, f"TRAIN_CPU {CPU_RULE}; got '16'", 1),
])
def test_a_missing_or_invalid_parameter_fails_naming_it(env, message, status):
    # Act
    result = deploy("--dry-run", **env)

    # Assert
    assert result.returncode == status
    assert message in result.stderr
    assert result.stdout == ""


def test_a_quiet_shop_can_run_recommend_on_the_smallest_tier_one_request_at_a_time():
    # Act
    functions = deployed(dry_run(RECOMMEND_MEMORY="256Mi", RECOMMEND_CPU="0.167", RECOMMEND_CONCURRENCY="1"))

    # Assert
    recommend = functions["recommend"]
    assert (recommend["--memory"], recommend["--cpu"], recommend["--concurrency"]) == ("256Mi", "0.167", "1")
    assert gcloud_map(recommend["--set-env-vars"])["THREADS"] == "1"


@pytest.mark.parametrize("env", [
    {"TRAIN_MEMORY": "4Gi"},  # what README's sizing advises past ~12M events: 2 vCPU, as deployed
    {"TRAIN_MEMORY": "8Gi"},
    {"TRAIN_MEMORY": "16Gi", "TRAIN_CPU": "4"},
    {"TRAIN_MEMORY": "32Gi", "TRAIN_CPU": "8"},
    {"RECOMMEND_MEMORY": "4Gi"},
])
def test_sizes_cloud_run_accepts_above_one_vcpu_are_deployed(env):
    # Act
    functions = deployed(dry_run(**env))

    # Assert
    name = next(iter(env)).split("_")[0].lower()
    assert functions[name]["--memory"] == env[f"{name.upper()}_MEMORY"]


GCLOUD_STUB = """#!{python}
# Stands in for the gcloud CLI, which cannot reach Google Cloud here: records each call, answers
# "not found" to describe, and prints a token for `secrets versions access`.
import json, os, sys
with open(os.environ["GCLOUD_CALLS"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:4] == ["secrets", "versions", "access"]:
    print("token-from-secret-manager")
sys.exit(1 if "describe" in sys.argv[1:4] else 0)
"""


def recording_gcloud(tmp_path) -> tuple[str, Path]:
    """A gcloud on PATH that records its calls (the real CLI needs Google Cloud): (PATH with it first, the file
    its calls go to, one JSON list of arguments a line, given as GCLOUD_CALLS)."""
    stub = tmp_path / "bin" / "gcloud"
    stub.parent.mkdir()
    stub.write_text(GCLOUD_STUB.format(python=sys.executable))
    stub.chmod(0o755)
    return f"{stub.parent}{os.pathsep}{os.environ['PATH']}", tmp_path / "calls.jsonl"


def test_without_dry_run_the_printed_commands_are_run(tmp_path):
    # Arrange
    path, calls = recording_gcloud(tmp_path)
    printed = commands(dry_run("--pubsub-topic=shop-events", PATH=path))

    # Act
    result = deploy("--pubsub-topic=shop-events", PATH=path, GCLOUD_CALLS=str(calls))

    # Assert
    assert result.returncode == 0, result.stderr
    ran = [["gcloud", *json.loads(line)] for line in calls.read_text().splitlines()]
    expected = [[word.replace("${train_token}", "token-from-secret-manager") for word in words] for words in printed
                if words[:4] != ["gcloud", "scheduler", "jobs", "delete"]]  # skipped: describe found no job
    assert [words for words in ran if "describe" not in words and "access" not in words] == expected
    assert ran[-1][-4:] == ["--http-method=POST", "--headers=Authorization=Bearer token-from-secret-manager",
                            "--attempt-deadline=1800s", "--quiet"]
    assert "token-from-secret-manager" not in result.stdout + result.stderr


def test_a_relative_source_names_the_same_folder_whether_printed_or_run(tmp_path):
    # Regression: the real run's bash started in the repository's root, so `--source=..` given from deploy/ uploaded
    # the folder above the repository, where the printed script, run from deploy/, uploads the repository.
    # Arrange
    path, calls = recording_gcloud(tmp_path)
    environment = {"PATH": path, "PROJECT": PROJECT, "DATABASE_URL": DATABASE_URL, "GCLOUD_CALLS": str(calls)}

    # Act
    printed = subprocess.run([sys.executable, str(DEPLOY), "--source=..", "--dry-run"], env=environment,
                             capture_output=True, text=True, cwd=DEPLOY.parent)
    ran = subprocess.run([sys.executable, str(DEPLOY), "--source=.."], env=environment, capture_output=True,
                         text=True, cwd=DEPLOY.parent)

    # Assert
    assert (printed.returncode, ran.returncode) == (0, 0), printed.stderr + ran.stderr
    assert {flag["--source"] for flag in deployed(printed.stdout).values()} == {str(ROOT)}
    deploys = [json.loads(line) for line in calls.read_text().splitlines() if line.startswith('["functions"')]
    assert {flags(words)["--source"] for words in deploys} == {str(ROOT)}


# --- what the functions' source upload contains ----------------------------------------------


def gcloudignore_patterns() -> list[str]:
    lines = (ROOT / ".gcloudignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """gitignore matching for the pattern kinds .gcloudignore uses: `name`, `*.ext`, `dir/` at any depth, and
    `!name` re-including a file (the last matching pattern decides; a file in an ignored folder stays out,
    because the walk below never enters that folder)."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        negated, pattern = pattern.startswith("!"), pattern.removeprefix("!")
        if pattern.endswith("/"):
            matched = any(fnmatch(part, pattern[:-1]) for part in parts[:-1])
        else:
            matched = any(fnmatch(part, pattern) for part in parts)
        if matched:
            verdict = not negated
    return verdict


def uploaded_files() -> set[str]:
    patterns = gcloudignore_patterns()
    shipped = set()
    for folder, dirs, names in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        dirs[:] = [d for d in dirs if not ignored(f"{prefix}{d}/x", patterns)]  # prune what is not uploaded
        shipped |= {f"{prefix}{name}" for name in names if not ignored(f"{prefix}{name}", patterns)}
    return shipped


def test_gcloudignore_uses_only_patterns_the_check_understands():
    # Act / Assert: no anchored paths, and negation of file names only, so `ignored` above is gitignore's answer
    for pattern in gcloudignore_patterns():
        assert "/" not in pattern.rstrip("/"), pattern
        assert not (pattern.startswith("!") and pattern.endswith("/")), pattern


def test_gcloudignore_uploads_the_functions_and_leaves_out_everything_else():
    # Act
    shipped = uploaded_files()

    # Assert
    assert {"main.py", "requirements.txt", "recommender/model_store.py", "webhooks/verification.py"} <= shipped
    assert {path.split("/")[0] for path in shipped} <= {"main.py", "requirements.txt", "recommender", "webhooks",
                                                        "__pycache__"}
    assert not {path for path in shipped if path.endswith((".npz", ".sqlite3"))}
    bytecode = {path for path in shipped if path.endswith(".pyc")}
    assert all(path.endswith(".cpython-311.pyc") and path.split("/")[-2] == "__pycache__" for path in bytecode)
    assert all(path.split("/")[0] in ("recommender", "webhooks") or path == "__pycache__/main.cpython-311.pyc"
               for path in bytecode), bytecode


def test_gcloudignore_ships_python_311_bytecode_and_no_other(tmp_path):
    # Arrange
    patterns = gcloudignore_patterns()

    # Act / Assert
    assert not ignored("recommender/__pycache__/serving.cpython-311.pyc", patterns)
    assert not ignored("__pycache__/main.cpython-311.pyc", patterns)
    assert ignored("recommender/__pycache__/serving.cpython-312.pyc", patterns)
    assert ignored("webhooks/stale.pyc", patterns)


def test_the_script_compiles_the_shipped_modules_with_hash_checked_bytecode():
    # Act
    script = dry_run()

    # Assert
    compile_line = next(line for line in script.splitlines() if "compileall" in line)
    assert "python3.11 -m compileall -q --invalidation-mode checked-hash main.py recommender webhooks" in compile_line
    assert script.index("compileall") < script.index("gcloud functions deploy")


def test_every_project_module_the_uploaded_code_imports_is_uploaded():
    # Arrange
    shipped = uploaded_files()
    local = {path.name.removesuffix(".py") for path in ROOT.iterdir() if path.suffix == ".py" or path.is_dir()}

    # Act
    imported = set()
    for path in (p for p in shipped if p.endswith(".py")):
        for node in ast.walk(ast.parse((ROOT / path).read_text(), path)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])

    # Assert
    missing = {name for name in imported & local
               if f"{name}.py" not in shipped and f"{name}/__init__.py" not in shipped}
    assert not missing, f"uploaded code imports {sorted(missing)}, which .gcloudignore leaves out"


def test_a_scheduler_service_account_makes_the_job_call_train_with_oidc_tokens():
    # Act
    script = dry_run("--scheduler-service-account=trainer@my-recs.iam.gserviceaccount.com")

    # Assert
    (create,) = [words for words in commands(script) if words[:4] == ["gcloud", "scheduler", "jobs", "create"]]
    train_url = f"https://us-central1-{PROJECT}.cloudfunctions.net/train"
    assert flags(create)["--oidc-service-account-email"] == "trainer@my-recs.iam.gserviceaccount.com"
    assert flags(create)["--oidc-token-audience"] == train_url
    assert "--headers" not in flags(create) and "secrets versions access" not in script
    train_env = gcloud_map(deployed(script)["train"]["--set-env-vars"])
    assert (train_env["TRAIN_SERVICE_ACCOUNT"], train_env["TRAIN_AUDIENCE"]) == (
        "trainer@my-recs.iam.gserviceaccount.com", train_url)


def test_a_report_token_secret_deploys_the_report_and_gives_the_app_its_route():
    # Act
    without = deployed(dry_run("--with-app"))
    functions = deployed(dry_run("--with-app", "--report-token-secret", "admin-report-token"))

    # Assert: opt-in; the report reads the stores and gets its token from Secret Manager, as app does
    assert "report" not in without and "REPORT_TOKEN" not in gcloud_map(without["app"]["--set-secrets"])
    report = functions["report"]
    assert gcloud_map(report["--set-secrets"]) == {"REPORT_TOKEN": "admin-report-token:latest"}
    assert gcloud_map(report["--set-env-vars"])["EVENT_STORE_URL"] == DATABASE_URL
    assert (report["--entry-point"], report["--memory"], report["--max-instances"]) == ("report", "512Mi", "2")
    assert gcloud_map(functions["app"]["--set-secrets"])["REPORT_TOKEN"] == "admin-report-token:latest"
    assert set(functions) == ENTRY_POINTS | {"report", "app"}

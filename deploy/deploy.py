#!/usr/bin/env python3
"""Deploy to Google Cloud Functions (2nd gen): each entry point of main.py as its own function, the Cloud
Scheduler job that trains every night, and optionally the model bucket and a Pub/Sub topic.

    python3 deploy/deploy.py --project my-recs --database-url postgresql://... --dry-run   # print
    python3 deploy/deploy.py --project my-recs --database-url postgresql://...             # run

What it produces is a bash script: --dry-run prints it, otherwise exactly that script runs under
`bash -euo pipefail`. Every flag defaults to the environment variable named in --help. Secrets never pass
through this program: the functions read SHOPIFY_API_SECRET and TRAIN_TOKEN from Secret Manager
(--set-secrets), and the scheduler job's bearer token is fetched by the script's own shell with
`gcloud secrets versions access`. Standard library only; needs the gcloud CLI to run, not to print.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the source uploaded to Cloud Functions (see .gcloudignore)
COMPILED = ("main.py", "recommender", "webhooks")  # what the functions import: shipped with its bytecode


@dataclass(frozen=True)
class FunctionSpec:
    """One deployed function; every size can be overridden by <NAME>_<FIELD> in the environment."""

    entry_point: str  # the function in main.py
    memory: str  # the artifact and fold-in live in memory; training holds the whole interaction matrix
    cpu: str  # Cloud Run needs a whole CPU to serve more than one request at a time
    concurrency: int  # requests one instance serves at once; gunicorn's THREADS is set to match
    min_instances: int  # > 0 keeps an instance warm: no cold start on the storefront's first request
    max_instances: int  # a cost cap; train is 1 so scheduled runs never overlap
    timeout: str  # per request
    secrets: tuple[str, ...] = ()  # environment variables filled from Secret Manager
    stores: bool = True  # needs EVENT_STORE_URL and MODEL_STORE_URL
    pubsub: bool = False  # triggered by the Pub/Sub topic (deployed only with --pubsub-topic)


FUNCTIONS = (
    FunctionSpec("webhook", "256Mi", "1", 16, 0, 20, "60s", ("SHOPIFY_API_SECRET",)),
    FunctionSpec("recommend", "512Mi", "1", 8, 1, 20, "30s", ("SHOPIFY_API_SECRET",)),  # verifies the app proxy
    FunctionSpec("collect", "256Mi", "1", 32, 0, 20, "10s"),
    FunctionSpec("train", "2Gi", "2", 1, 0, 1, "1800s", ("TRAIN_TOKEN",)),
    FunctionSpec("healthz", "256Mi", "1", 8, 0, 2, "10s", stores=False),
    FunctionSpec("webhook_pubsub", "256Mi", "1", 16, 0, 20, "60s", pubsub=True),
)
APP = FunctionSpec("app", "2Gi", "2", 8, 0, 10, "1800s", ("SHOPIFY_API_SECRET", "TRAIN_TOKEN"))
# The attribution report for an app's admin (GET /report), deployed with --report-token-secret only.
REPORT = FunctionSpec("report", "512Mi", "1", 4, 0, 2, "60s", ("REPORT_TOKEN",))

TOKEN_VARIABLE = "train_token"  # the shell variable of the generated script that holds the bearer token


class Raw(str):
    """A word already written for the shell (it expands a variable), printed as it is."""


def parse_args(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    def default(name: str, fallback: str | None = None) -> str | None:
        return env.get(name) or fallback

    parser = argparse.ArgumentParser(
        description="Deploy the Shopify recommender to Cloud Functions (2nd gen); prints or runs gcloud commands.",
        epilog="Per-function sizes: <FUNCTION>_<FIELD> in the environment, e.g. RECOMMEND_MEMORY=1Gi, "
               "TRAIN_TIMEOUT=3600s, WEBHOOK_CONCURRENCY=32 (fields: MEMORY, CPU, CONCURRENCY, MIN_INSTANCES, "
               "MAX_INSTANCES, TIMEOUT).",
    )
    add = parser.add_argument
    add("--project", default=default("PROJECT", env.get("GOOGLE_CLOUD_PROJECT")),
        help="Google Cloud project id [PROJECT, or GOOGLE_CLOUD_PROJECT]")
    add("--region", default=default("REGION", "us-central1"), help="functions and scheduler region [REGION]")
    add("--bucket", default=default("BUCKET"), help="model bucket [BUCKET; default <project>-recommender-models]")
    add("--model-prefix", default=default("MODEL_PREFIX", "models"), help="folder in the bucket [MODEL_PREFIX]")
    add("--database-url", default=default("DATABASE_URL", env.get("EVENT_STORE_URL")),
        help="EVENT_STORE_URL of the shared event store [DATABASE_URL, or EVENT_STORE_URL]")
    add("--database-url-secret", default=default("DATABASE_URL_SECRET"),
        help="instead: Secret Manager secret holding that URL, e.g. when it carries a password [DATABASE_URL_SECRET]")
    add("--shopify-secret", default=default("SHOPIFY_SECRET_NAME", "shopify-api-secret"),
        help="Secret Manager secret with the app's client secret [SHOPIFY_SECRET_NAME]")
    add("--train-token-secret", default=default("TRAIN_TOKEN_SECRET_NAME", "train-token"),
        help="Secret Manager secret with the /train bearer token [TRAIN_TOKEN_SECRET_NAME]")
    add("--report-token-secret", default=default("REPORT_TOKEN_SECRET_NAME"),
        help="Secret Manager secret with a bearer token for GET /report: deploys `report` (and gives `app` the "
             "route) [REPORT_TOKEN_SECRET_NAME; default: no report over HTTP]")
    add("--service-account", default=default("SERVICE_ACCOUNT"),
        help="runtime service account of the functions [SERVICE_ACCOUNT; default: the project's default]")
    add("--name-prefix", default=default("FUNCTION_PREFIX", ""), help="prefix of function names [FUNCTION_PREFIX]")
    add("--recommend-min-instances", type=int,  # RECOMMEND_MIN_INSTANCES: read with the other per-function sizes
        help="warm recommend instances [RECOMMEND_MIN_INSTANCES; default 1]")
    add("--preload-shops", default=default("PRELOAD_SHOPS", ""),
        help="shops whose models recommend instances load while starting, comma-separated [PRELOAD_SHOPS]")
    add("--model-memory-mib", type=float, default=_number(env, "MODEL_MEMORY_MIB"),
        help="the models a recommend instance keeps at most; the least recently asked shops' models go first "
             "[MODEL_MEMORY_MIB; default: 45%% of recommend's memory, 20%% of app's]")
    add("--schedule", default=default("TRAIN_SCHEDULE", "0 3 * * *"), help="when to train, cron [TRAIN_SCHEDULE]")
    add("--time-zone", default=default("TRAIN_TIME_ZONE", "Etc/UTC"), help="of the schedule [TRAIN_TIME_ZONE]")
    add("--scheduler-job", default=default("SCHEDULER_JOB", "recommender-train"), help="job name [SCHEDULER_JOB]")
    add("--pubsub-topic", default=default("PUBSUB_TOPIC"),
        help="create this Pub/Sub topic and deploy webhook_pubsub on it [PUBSUB_TOPIC]")
    add("--scheduler-service-account", default=default("SCHEDULER_SERVICE_ACCOUNT"),
        help="call /train with OIDC tokens for this service account instead of the bearer token "
             "[SCHEDULER_SERVICE_ACCOUNT]")
    add("--create-bucket", action="store_true", default=_flag(env, "CREATE_BUCKET"),
        help="create the model bucket if missing [CREATE_BUCKET=1]")
    add("--with-app", action="store_true", default=_flag(env, "DEPLOY_APP"),
        help="also deploy `app`, every route in one function [DEPLOY_APP=1]")
    add("--source", default=default("SOURCE", str(ROOT)), help="folder uploaded as the function source [SOURCE]")
    add("--dry-run", action="store_true", help="print the commands; run nothing")
    args = parser.parse_args(argv)

    if not args.project:
        parser.error("PROJECT is not set: pass --project or set PROJECT (or GOOGLE_CLOUD_PROJECT)")
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", args.project):
        parser.error(f"PROJECT must be a Google Cloud project id, got {args.project!r}")
    if args.model_memory_mib is not None and not 0 < args.model_memory_mib < float("inf"):
        parser.error(f"MODEL_MEMORY_MIB must be a number of MiB > 0, got {args.model_memory_mib:g}")
    if not (args.database_url or args.database_url_secret):
        parser.error("DATABASE_URL is not set: pass --database-url (or --database-url-secret) with the shared event"
                     " store; a Cloud Function's disk vanishes with its instance")
    args.bucket = args.bucket or f"{args.project}-recommender-models"
    # Absolute: the script runs from the repository's root, the printed one from wherever its reader is.
    args.source = str(Path(args.source).resolve())
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", args.bucket):
        parser.error(f"BUCKET must be a Cloud Storage bucket name, got {args.bucket!r}")
    return args


def function_specs(args: argparse.Namespace, env: dict[str, str]) -> list[FunctionSpec]:
    chosen = [spec for spec in FUNCTIONS if not spec.pubsub or args.pubsub_topic]
    app = APP
    if args.report_token_secret:
        chosen.append(REPORT)
        app = replace(APP, secrets=(*APP.secrets, "REPORT_TOKEN"))
    specs = [_with_overrides(spec, env) for spec in ([*chosen, app] if args.with_app else chosen)]
    if args.recommend_min_instances is None:
        return specs
    return [replace(spec, min_instances=args.recommend_min_instances) if spec.entry_point == "recommend" else spec
            for spec in specs]


def deploy_script(args: argparse.Namespace, env: dict[str, str]) -> str:
    """The whole deployment as a bash script, one command per paragraph."""
    project, region = f"--project={args.project}", f"--region={args.region}"
    model_store_url = f"gs://{args.bucket}/{args.model_prefix.strip('/')}".rstrip("/")
    blocks = [f"#!/usr/bin/env bash\n# Generated by deploy/deploy.py for project {args.project}, region {args.region}."
              "\nset -euo pipefail"]

    if args.create_bucket:
        blocks.append(
            "# The model bucket: private, one region, no soft delete (shop/redact deletes models for good).\n"
            + _unless_exists(["gcloud", "storage", "buckets", "describe", f"gs://{args.bucket}", project],
                             ["gcloud", "storage", "buckets", "create", f"gs://{args.bucket}", project,
                              f"--location={args.region}", "--uniform-bucket-level-access",
                              "--public-access-prevention", "--soft-delete-duration=0"]))
    if args.pubsub_topic:
        blocks.append("# The Pub/Sub topic asked for with --pubsub-topic.\n" + _unless_exists(
            ["gcloud", "pubsub", "topics", "describe", args.pubsub_topic, project],
            ["gcloud", "pubsub", "topics", "create", args.pubsub_topic, project]))

    compile_command = " ".join(_quote(word) for word in ["python3.11", "-m", "compileall", "-q", "--invalidation-mode",
                                                         "checked-hash", *COMPILED])
    blocks.append(
        "# Bytecode for the runtime's Python 3.11, checked against each source file's hash when imported: a new\n"
        "# instance then does not compile our modules first (about 30 ms of every cold start, bench/PERFORMANCE.md).\n"
        f"if command -v python3.11 >/dev/null 2>&1; then\n  (cd {_quote(args.source)} && {compile_command})\n"
        "else\n  echo 'python3.11 not found: the functions will compile their modules on each cold start' >&2\nfi")

    secret_names = {"SHOPIFY_API_SECRET": args.shopify_secret, "TRAIN_TOKEN": args.train_token_secret,
                    "REPORT_TOKEN": args.report_token_secret}
    train_url = f"https://{args.region}-{args.project}.cloudfunctions.net/{args.name_prefix}train"
    for spec in function_specs(args, env):
        env_vars: dict[str, str] = {}
        secrets = {name: f"{secret_names[name]}:latest" for name in spec.secrets}
        if spec.stores:
            if args.database_url_secret:
                secrets = {"EVENT_STORE_URL": f"{args.database_url_secret}:latest", **secrets}
            else:
                env_vars["EVENT_STORE_URL"] = args.database_url
            env_vars["MODEL_STORE_URL"] = model_store_url
        env_vars["THREADS"] = str(spec.concurrency)
        if spec.entry_point in ("recommend", "app") and args.preload_shops:
            env_vars["PRELOAD_SHOPS"] = args.preload_shops  # their models load while an instance starts
        budget = model_memory_mib(spec, args.model_memory_mib)
        if budget is not None:
            env_vars["MODEL_MEMORY_MIB"] = f"{budget:g}"
        # One BLAS thread per request: gunicorn's threads already fill the CPUs, and OpenBLAS's own pool on
        # top of them tripled CPU per recommendation in bench/PERFORMANCE.md (implicit asks for it too).
        env_vars["OPENBLAS_NUM_THREADS"] = "1"
        if spec.entry_point in MODEL_MEMORY_SHARES:  # the functions that keep models
            env_vars["MALLOC_ARENA_MAX"] = MALLOC_ARENA_MAX
        if spec.entry_point in ("train", "app"):
            env_vars["TRAIN_BUDGET_SECONDS"] = str(train_budget_seconds(spec))
        if spec.entry_point == "train" and args.scheduler_service_account:
            env_vars["TRAIN_SERVICE_ACCOUNT"] = args.scheduler_service_account
            env_vars["TRAIN_AUDIENCE"] = train_url
        # --retry: without it Cloud Functions drops the event of an invocation that failed, and webhook_pubsub raises
        # (the store down) precisely so that Pub/Sub redelivers; a message it can never store returns instead.
        trigger = ([f"--trigger-topic={args.pubsub_topic}", "--retry"] if spec.pubsub
                   else ["--trigger-http", "--allow-unauthenticated"])  # train too: it checks its caller itself
        command = [
            "gcloud", "functions", "deploy", f"{args.name_prefix}{spec.entry_point}", project, region,
            "--gen2", "--runtime=python311", f"--source={args.source}", f"--entry-point={spec.entry_point}",
            *trigger,
            f"--memory={spec.memory}", f"--cpu={spec.cpu}", f"--concurrency={spec.concurrency}",
            f"--min-instances={spec.min_instances}", f"--max-instances={spec.max_instances}",
            f"--timeout={spec.timeout}", f"--set-env-vars={gcloud_map(env_vars)}",
        ]
        if secrets:
            command.append(f"--set-secrets={gcloud_map(secrets)}")
        if args.service_account:
            command.append(f"--service-account={args.service_account}")
        command.append("--quiet")
        blocks.append(f"# {spec.entry_point}: {spec.memory}, {spec.cpu} CPU, up to {spec.concurrency} requests at once"
                      " per instance.\n" + render(command))

    job = [args.scheduler_job, project, f"--location={args.region}"]
    if args.scheduler_service_account:
        blocks.append("\n".join([
            "# Nightly training: Cloud Scheduler POSTs /train with a Google-signed OIDC token for the service account.",
            "if " + render(["gcloud", "scheduler", "jobs", "describe", *job]) + " >/dev/null 2>&1; then",
            "  " + render(["gcloud", "scheduler", "jobs", "delete", *job, "--quiet"]),
            "fi",
            render(["gcloud", "scheduler", "jobs", "create", "http", *job, f"--schedule={args.schedule}",
                    f"--time-zone={args.time_zone}", f"--uri={train_url}", "--http-method=POST",
                    f"--oidc-service-account-email={args.scheduler_service_account}",
                    f"--oidc-token-audience={train_url}", f"--attempt-deadline={SCHEDULER_DEADLINE_SECONDS}s",
                    "--quiet"]),
        ]))
        return "\n\n".join(blocks) + "\n"
    read_token = render(["gcloud", "secrets", "versions", "access", "latest", f"--secret={args.train_token_secret}",
                         project])
    blocks.append("\n".join([
        "# Nightly training: Cloud Scheduler POSTs /train with the bearer token, read from Secret Manager here.",
        f'{TOKEN_VARIABLE}="$({read_token})"',
        f': "${{{TOKEN_VARIABLE}:?the secret {args.train_token_secret} is empty}}"',
        "if " + render(["gcloud", "scheduler", "jobs", "describe", *job]) + " >/dev/null 2>&1; then",
        "  " + render(["gcloud", "scheduler", "jobs", "delete", *job, "--quiet"]),
        "fi",
        render(["gcloud", "scheduler", "jobs", "create", "http", *job, f"--schedule={args.schedule}",
                f"--time-zone={args.time_zone}", f"--uri={train_url}", "--http-method=POST",
                Raw(f'--headers="Authorization=Bearer ${{{TOKEN_VARIABLE}}}"'),
                f"--attempt-deadline={SCHEDULER_DEADLINE_SECONDS}s",
                "--quiet"]),
    ]))
    return "\n\n".join(blocks) + "\n"


# The share of a function's memory its models may keep (MODEL_MEMORY_MIB) unless told, each counted at its full
# size: the rest holds the instance itself (~82 MiB), its caches (~25 MiB), the artifacts being read (up to 4/3 ×
# 32 MiB, or of the largest) and each request's scratch arrays; at 512 MiB, 230 for the models leaves ~130 MiB
# to spare. `app` also trains in the same instance.
MODEL_MEMORY_SHARES = {"recommend": 0.45, "app": 0.2}
# glibc's malloc arenas in a function that keeps models: by default each thread that allocates may get one of its
# own (up to eight a core), each keeping memory freed in it. Two: an instance answering 24 shops of 100k items
# within MODEL_MEMORY_MIB=230 held 205 MiB (PSS; the worker's peak RSS 238) instead of 262 (341), its answers as fast
# (bench.many_shops_probe --intent personalized, bench/PERFORMANCE.md round 35). Read when the process starts, so
# it is set here, not by main.py.
MALLOC_ARENA_MAX = "2"


def model_memory_mib(spec: FunctionSpec, told: float | None) -> float | None:
    """MODEL_MEMORY_MIB for this function: `told`, else its share of the memory; None where it serves no models
    (or its memory is written in a form left to gcloud)."""
    share = MODEL_MEMORY_SHARES.get(spec.entry_point)
    if share is None:
        return None
    if told is not None:
        return told
    mib = _mebibytes(spec.memory)
    return None if mib is None else int(mib * share)


# The share of a training function's time the nightly run may start shops in (TRAIN_BUDGET_SECONDS): a shop is
# started only if its last training time fits in what is left, and the rest covers one slower than that (the same
# 5M-event job took 116-145 s between runs, bench/PERFORMANCE.md round 33). Past its timeout the caller gets a 504
# and the run goes on, if at all, throttled in an instance that may be stopped. 1800 s: 1500.
TRAIN_BUDGET_SHARE = 5 / 6
# Cloud Scheduler waits at most 30 minutes for an HTTP target (--attempt-deadline); then it cancels the request, and
# the run it started goes on, if at all, outside any request. The scheduled `train` function's time is the lesser.
SCHEDULER_DEADLINE_SECONDS = 1800


def train_budget_seconds(spec: FunctionSpec) -> int:
    """TRAIN_BUDGET_SECONDS for a function that trains: its share of the function's timeout, and for `train`, which
    Cloud Scheduler calls, of the scheduler's deadline if that is shorter."""
    timeout = timeout_seconds(spec)
    if timeout is None:
        raise SystemExit(f"{spec.entry_point.upper()}_TIMEOUT must be a duration such as 1800s, 30m or 1h;"
                         f" got {spec.timeout!r}")
    if spec.entry_point == "train":
        timeout = min(timeout, SCHEDULER_DEADLINE_SECONDS)
    return max(1, int(timeout * TRAIN_BUDGET_SHARE))  # 0 would mean no budget


def timeout_seconds(spec: FunctionSpec) -> int | None:
    """The function's timeout in seconds (1800, 1800s, 30m, 1h, 1h30m: what gcloud takes as whole seconds); None
    for a form left to gcloud to judge."""
    text = spec.timeout.strip()
    match = re.fullmatch(r"(\d+)|(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or match is None:
        return None
    plain, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return plain + 3600 * hours + 60 * minutes + seconds


def render(command: list[str]) -> str:
    """One command for bash: positional words on the first line, one flag per continuation line."""
    split = next((i for i, word in enumerate(command) if word.startswith("--")), len(command))
    head = " ".join(_quote(word) for word in command[:split])
    return " \\\n    ".join([head, *(_quote(word) for word in command[split:])])


def gcloud_map(pairs: dict[str, str]) -> str:
    """KEY=VALUE,... as gcloud reads it; a value with a comma switches to gcloud's ^DELIM^ escape."""
    delimiter = next((d for d in ",@|;#~" if not any(d in value for value in pairs.values())), None)
    if delimiter is None:
        raise SystemExit(f"cannot pass {sorted(pairs)} to gcloud: the values use every delimiter in ',@|;#~'")
    joined = delimiter.join(f"{key}={value}" for key, value in pairs.items())
    return joined if delimiter == "," else f"^{delimiter}^{joined}"


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    args = parse_args(sys.argv[1:] if argv is None else argv, env)
    if args.database_url and args.database_url.startswith("sqlite"):
        print("warning: a SQLite event store lives on one instance's in-memory disk; use a shared database",
              file=sys.stderr)
    script = deploy_script(args, env)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT).returncode


def _unless_exists(describe: list[str], create: list[str]) -> str:
    return f"if ! {render(describe)} >/dev/null 2>&1; then\n  {render(create)}\nfi"


def _quote(word: str) -> str:
    return str(word) if isinstance(word, Raw) else shlex.quote(word)


def _number(env: dict[str, str], name: str) -> float | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "").lower() in ("1", "true", "yes")


def _with_overrides(spec: FunctionSpec, env: dict[str, str]) -> FunctionSpec:
    changes = {}
    for spec_field in fields(FunctionSpec):
        name = f"{spec.entry_point.upper()}_{spec_field.name.upper()}"
        if spec_field.type in ("str", "int") and env.get(name):
            try:
                changes[spec_field.name] = int(env[name]) if spec_field.type == "int" else env[name]
            except ValueError:
                raise SystemExit(f"{name} must be an integer, got {env[name]!r}") from None
    sized = replace(spec, **changes)
    _check_cloud_run_sizes(sized)
    return sized


def _mebibytes(memory: str) -> float | None:
    """256Mi, 2Gi (the units this script writes) in MiB; None for a form left to gcloud to judge."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", memory)
    return None if match is None else float(match[1]) * (1024 if match[2] == "Gi" else 1)


# Cloud Run's vCPU and memory table (cloud.google.com/run/docs/configuring/services/cpu and .../memory-limits): the
# least vCPUs for a memory limit above each size, and the least memory for each of the larger vCPU counts (MiB).
WHOLE_CPUS = (1, 2, 4, 6, 8)
CPU_ABOVE_MEMORY = ((24 * 1024, 8), (16 * 1024, 6), (8 * 1024, 4), (4 * 1024, 2), (1024, 1), (512, 0.5))
MEMORY_FOR_CPU = {4: 2 * 1024, 6: 4 * 1024, 8: 4 * 1024}
LARGEST_MEMORY_MIB = 32 * 1024


def _check_cloud_run_sizes(spec: FunctionSpec) -> None:
    """Cloud Run's rules for a vCPU limit (cloud.google.com/run/docs/configuring/services/cpu), checked before
    any command runs: 1, 2, 4, 6 or 8, or 0.08 to 1 in steps of 0.001; below 1, one request at a time; at least
    0.5 vCPU above 512 MiB, 1 above 1 GiB, 2 above 4 GiB, 4 above 8, 6 above 16, 8 above 24; 4 vCPUs from 2 GiB,
    6 and 8 from 4 GiB; at most 32 GiB."""
    name = spec.entry_point.upper()
    try:
        cpu = float(spec.cpu)
    except ValueError:
        cpu = float("nan")
    whole = cpu in WHOLE_CPUS
    fraction = 0.08 <= cpu < 1 and round(cpu, 3) == cpu
    if not (whole or fraction):
        raise SystemExit(f"{name}_CPU must be 1, 2, 4, 6 or 8 vCPUs, or 0.08 to 1 in steps of 0.001;"
                         f" got {spec.cpu!r}")
    if cpu < 1 and spec.concurrency != 1:
        raise SystemExit(f"{name}_CONCURRENCY must be 1 when {name}_CPU is below 1 (Cloud Run serves one request at a"
                         f" time on part of a vCPU); got {spec.concurrency}")
    timeout, longest = timeout_seconds(spec), (540 if spec.pubsub else 3600)
    if timeout is not None and not 0 < timeout <= longest:
        raise SystemExit(f"{name}_TIMEOUT must be from 1 to {longest} s for this function (Cloud Functions' limit for"
                         f" {'an event-driven' if spec.pubsub else 'an HTTP'} function); got {spec.timeout!r}")
    mib = _mebibytes(spec.memory)
    if mib is None:
        return
    if mib > LARGEST_MEMORY_MIB:
        raise SystemExit(f"{name}_MEMORY must be at most 32Gi; got {spec.memory!r}")
    least_cpu = next((least for above, least in CPU_ABOVE_MEMORY if mib > above), 0)
    if cpu < least_cpu:
        raise SystemExit(f"{name}_MEMORY of {spec.memory} needs {name}_CPU of at least {least_cpu:g}; got {spec.cpu}")
    least_mib = MEMORY_FOR_CPU.get(cpu, 0)
    if mib < least_mib:
        raise SystemExit(f"{name}_CPU of {spec.cpu} needs {name}_MEMORY of at least {least_mib // 1024}Gi;"
                         f" got {spec.memory}")


if __name__ == "__main__":
    sys.exit(main())

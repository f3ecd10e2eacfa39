"""Command line: `python -m recommender {import,train,evaluate,export,backfill,report,product}`.

    python -m recommender import history.csv --shop example.myshopify.com
    python -m recommender train [--shop example.myshopify.com]
    python -m recommender export EXPORT_ID --shop example.myshopify.com
    python -m recommender report --shop example.myshopify.com [--days 30]
    python -m recommender product PRODUCT_ID --shop example.myshopify.com
    python -m recommender backfill --shop example.myshopify.com [--since 2025-01-01] [--token-env SHOPIFY_ADMIN_TOKEN]
        [--api rest|graphql]
    python -m recommender evaluate --shop example.myshopify.com [--holdout-days 14 | --last-order] [--tune]
    python -m recommender evaluate --train train.csv --test test.csv [--k 10,20] [--models als,bpr,pop]

Reads the same environment variables as the functions (EVENT_STORE_URL, MODEL_STORE_URL, ALS_*).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone

from recommender.errors import RecommenderError
from recommender.evaluation import add_evaluate_arguments, run_evaluate_command
from recommender.model_store import check_shop_domain
from recommender.runtime import Runtime
from recommender.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recommender")
    commands = parser.add_subparsers(dest="command", required=True)
    importer = commands.add_parser("import", help="load historical interactions from a CSV file")
    importer.add_argument("file")
    importer.add_argument("--shop", required=True, help="shop domain, e.g. example.myshopify.com")
    exporter = commands.add_parser("export", help="print a customers/data_request export kept for the merchant")
    exporter.add_argument("export_id")
    exporter.add_argument("--shop", required=True)
    trainer = commands.add_parser("train", help="train and publish a model per shop")
    trainer.add_argument("--shop", help="only this shop (default: the installed shops, started longest ago first, "
                                        "as many as TRAIN_BUDGET_SECONDS holds; the others are deferred to the next run)")
    backfiller = commands.add_parser("backfill", help="store past products and orders from Shopify's Admin API")
    backfiller.add_argument("--shop", required=True, help="shop domain, e.g. example.myshopify.com")
    backfiller.add_argument("--token-env", default="SHOPIFY_ADMIN_TOKEN",
                            help="environment variable holding the Admin API access token")
    backfiller.add_argument("--since", help="only orders created since this date, e.g. 2025-01-01")
    backfiller.add_argument("--api", choices=("rest", "graphql"), default="rest",
                            help="which Admin API to read: rest (the default for now; legacy since 2024-10-01) or "
                                 "graphql (the only one public apps submitted since 2025-04-01 may use; reads "
                                 "every variant of a product, where rest reads 100)")
    backfiller.add_argument("--api-version", default="2026-04")
    backfiller.add_argument("--state", help="progress file for resuming (default ./data/backfill-<shop>.json)")
    backfiller.add_argument("--base-url", help="Admin API origin (default https://<shop>; http only to loopback)")
    reporter = commands.add_parser("report", help="answers viewed, clicks, click-through rate and attributed "
                                                  "purchases of the storefront's recommendations (JSON)")
    reporter.add_argument("--shop", required=True, help="shop domain, e.g. example.myshopify.com")
    reporter.add_argument("--days", type=_positive_days, default=30.0,
                          help="the window: the last DAYS days (default 30); purchases are credited to a click at most "
                               "ATTRIBUTION_DAYS (default 7) before them")
    explainer = commands.add_parser("product", help="why a product is or is not recommended: its catalog verdict, "
                                                     "what the latest model knows of it, its recent events (JSON)")
    explainer.add_argument("product_id", help="the Shopify product id (digits)")
    explainer.add_argument("--shop", required=True, help="shop domain, e.g. example.myshopify.com")
    evaluator = commands.add_parser("evaluate", help="offline evaluation of models on held-out interactions")
    add_evaluate_arguments(evaluator)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.command == "evaluate":
            return run_evaluate_command(args, os.environ)
        runtime = Runtime.from_settings(Settings.from_mapping(os.environ))
        if args.command == "import":
            from recommender.history_import import import_history

            shop = check_shop_domain(args.shop)
            read, stored, redacted = import_history(runtime.store, args.file, shop)
            # The merchant bootstraps their own shop. An installed one keeps its install's time by Shopify's clock,
            # which an app/uninstalled triggered before now, delivered late, is compared with.
            if not runtime.store.is_shop_installed(shop):
                runtime.store.set_shop_installed(shop, True)
            print(json.dumps({"rows": read, "stored": stored, "duplicates": read - stored - redacted,
                              "redacted": redacted}))
        elif args.command == "backfill":
            from webhooks.backfill import run_backfill_command  # an entry point, like main.py: it may use webhooks

            return run_backfill_command(args, os.environ, runtime.store)
        elif args.command == "report":
            from recommender.attribution import attribution_report

            print(json.dumps(attribution_report(runtime.store, check_shop_domain(args.shop), args.days,
                                                runtime.settings.attribution_days), indent=2))
        elif args.command == "product":
            from recommender.product_status import product_status

            print(json.dumps(product_status(runtime.store, runtime.model_store, check_shop_domain(args.shop),
                                            args.product_id, datetime.now(timezone.utc)), indent=2))
        elif args.command == "export":
            export = runtime.store.data_export(check_shop_domain(args.shop), args.export_id)
            if export is None:
                print(f"error: no export {args.export_id!r} for {args.shop}", file=sys.stderr)
                return 1
            print(json.dumps(export, indent=2, sort_keys=True))
        else:
            from recommender.retraining import run_scheduled_training

            shops = [check_shop_domain(args.shop)] if args.shop else None
            settings = runtime.settings
            report = run_scheduled_training(runtime.store, runtime.model_store, settings.training, settings.gate(),
                                            settings.retention_days, shops,
                                            budget_seconds=settings.train_budget_seconds)
            print(json.dumps(report, indent=2))
            # nothing trained is a failure, unless other runs going on have the shops
            if not (report["trained"] or report["other_runs"]) or report["failed"] or report["queue_errors"]:
                return 1
    except (RecommenderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = float("nan")
    if not 0 < days <= 3650:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of days > 0 and at most 3650, got {text!r}")
    return days


if __name__ == "__main__":
    sys.exit(main())

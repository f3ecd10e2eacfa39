"""Run the whole product locally on the embedded defaults.

    python -m demo [--port 8080] [--customers 400] [--no-serve]

1. starts functions-framework (`--target app`) on 127.0.0.1 as a real process;
2. imports the demo store's browsing history with `python -m recommender import`;
3. replays the store's signed webhooks (products, carts, orders) through POST /webhooks;
4. trains and publishes a model through POST /train;
5. prints curl commands, runs them;
6. measures the recommendations: a second instance with a control group (CONTROL_PERCENT=25) answers simulated
   shoppers, whose views, clicks and purchases go through POST /collect as the pixel sends them, and prints what
   GET /report says of the model's answers beside the control group's; then keeps serving until Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from demo.store import DemoConfig, DemoStore, generate_demo_store

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_server(env: dict[str, str], port: int) -> subprocess.Popen:
    """functions-framework as a user runs it; waits until /healthz answers."""
    command = [sys.executable, "-m", "functions_framework", "--target", "app", "--source", str(ROOT / "main.py"),
               "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"functions-framework exited with code {server.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return server
        except requests.ConnectionError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("functions-framework did not answer /healthz within 60 s")


def import_history(store: DemoStore, env: dict[str, str]) -> None:
    """Write the views as a history CSV and load it the way a merchant would."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "demo-history.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["customer_id", "product_id", "kind", "occurred_at", "quantity"])
            writer.writeheader()
            writer.writerows(store.history_rows)
        subprocess.run([sys.executable, "-m", "recommender", "import", str(path), "--shop", store.config.shop],
                       cwd=ROOT, env=env, check=True)


def replay_webhooks(store: DemoStore, base: str, secret: str) -> dict[str, int]:
    """POST every signed webhook; catalog first, then the rest in time order, four at a time."""
    deliveries = store.signed_requests(secret)
    catalog = [d for d in deliveries if d.topic.startswith("products/")]
    rest = [d for d in deliveries if not d.topic.startswith("products/")]
    counts: dict[str, int] = {}
    session = requests.Session()

    def post(delivery) -> str:
        response = session.post(f"{base}/webhooks", data=delivery.body, headers=delivery.headers, timeout=30)
        if response.status_code != 200:
            raise SystemExit(f"webhook {delivery.topic} answered {response.status_code}: {response.text}")
        return response.json()["status"]

    started = time.monotonic()
    for batch in (catalog, rest):
        with ThreadPoolExecutor(max_workers=4) as pool:
            for status in pool.map(post, batch):
                counts[status] = counts.get(status, 0) + 1
    print(f"  {len(deliveries)} webhooks in {time.monotonic() - started:.1f} s: {counts}")
    return counts


def _pixel_time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def measure_storefront(store: DemoStore, base: str, report_token: str, shoppers: int = 160) -> dict:
    """Simulated shoppers of the demo store on an instance with a control group: each is shown a personalized answer
    of six products (the model's, or best sellers for the control group), clicks each shown product of a category it
    favours with probability 0.4 and any other with 0.05, and buys its first click with probability 1/2. The theme's events and the pixel's
    checkout go through POST /collect, each shopper a browser at an address of its own; returns GET /report's body."""
    rng = random.Random(11)
    category = {p.product_id: p.category for p in store.products}
    product = {p.product_id: p for p in store.products}
    shop, session = store.config.shop, requests.Session()
    seen = datetime.now(timezone.utc) - timedelta(minutes=5)
    for n, customer in enumerate(store.customers[:shoppers]):
        answer = session.get(f"{base}/recommend", params={"shop": shop, "customer_id": customer.customer_id, "n": 6},
                             timeout=10).json()
        shown = [item["product_id"] for item in answer["recommendations"]]
        browser = f"demo-browser-{customer.customer_id}"
        about = {"recommendation_id": answer["recommendation_id"], "intent": answer["intent"]}
        events = [{"id": f"sh-demo-{n}-view", "name": "recommendations_viewed", "timestamp": _pixel_time(seen),
                   "clientId": browser, "type": "custom", "customData": {**about, "product_ids": shown}}]
        clicked = [pid for pid in shown if rng.random() < (0.4 if category[pid] in customer.favourites else 0.05)]
        events += [{"id": f"sh-demo-{n}-click-{pid}", "name": "recommendations_clicked",
                    "timestamp": _pixel_time(seen + timedelta(minutes=1)), "clientId": browser, "type": "custom",
                    "customData": {**about, "product_id": pid, "position": shown.index(pid)}} for pid in clicked]
        if clicked and rng.random() < 0.5:
            bought = product[clicked[0]]
            events.append({"id": f"sh-demo-{n}-checkout", "name": "checkout_completed",
                           "timestamp": _pixel_time(seen + timedelta(minutes=2)), "clientId": browser,
                           "data": {"checkout": {"order": {"id": f"gid://shopify/OrderIdentity/{900000 + n}"},
                                                 "lineItems": [{"quantity": 1, "variant": {
                                                     "id": bought.variant_id, "product": {"id": bought.product_id},
                                                     "price": {"amount": f"{bought.price:.2f}",
                                                               "currencyCode": "USD"}}}]}}})
        response = session.post(f"{base}/collect", params={"shop": shop}, data=json.dumps(events), timeout=10,
                                headers={"Content-Type": "text/plain", "X-Forwarded-For": f"10.9.{n // 200}.{n % 200}"})
        if response.status_code != 200:
            raise SystemExit(f"/collect answered {response.status_code}: {response.text}")
    report = session.get(f"{base}/report", params={"shop": shop, "days": "1"},
                         headers={"Authorization": f"Bearer {report_token}"}, timeout=30)
    report.raise_for_status()
    return report.json()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--customers", type=int, default=DemoConfig.customers)
    parser.add_argument("--no-serve", action="store_true", help="exit after printing the example calls")
    args = parser.parse_args(argv)
    if not _port_is_free(args.port):
        print(f"error: port {args.port} on 127.0.0.1 is taken; pick another with --port", file=sys.stderr)
        return 2

    env = dict(os.environ)
    env.setdefault("SHOPIFY_API_SECRET", "demo-" + secrets.token_hex(16))
    env.setdefault("TRAIN_TOKEN", "demo-" + secrets.token_hex(16))
    env.setdefault("REPORT_TOKEN", "demo-" + secrets.token_hex(16))
    env.setdefault("EVENT_STORE_URL", "sqlite:///./data/events.sqlite3")
    env.setdefault("MODEL_STORE_URL", "file://./data/models")
    # Local demo only: let the printed curl commands name a customer. In production customers are
    # identified by Shopify's signed app proxy (logged_in_customer_id), never by a query parameter.
    env.setdefault("TRUST_CUSTOMER_ID_PARAM", "true")
    env["PYTHONPATH"] = str(ROOT)
    store = generate_demo_store(DemoConfig(customers=args.customers))
    base = f"http://127.0.0.1:{args.port}"

    print(f"Demo store {store.config.shop}: {len(store.products)} products, {len(store.customers)} customers")
    print(f"Event store {env['EVENT_STORE_URL']}, model store {env['MODEL_STORE_URL']}")
    server = start_server(env, args.port)
    try:
        print(f"1/3 importing {len(store.history_rows)} historical views")
        import_history(store, env)
        print("2/3 replaying signed webhooks through POST /webhooks")
        replay_webhooks(store, base, env["SHOPIFY_API_SECRET"])
        print("3/3 training through POST /train")
        trained = requests.post(f"{base}/train", headers={"Authorization": f"Bearer {env['TRAIN_TOKEN']}"}, timeout=600)
        trained.raise_for_status()
        for run in trained.json()["trained"]:
            gate = run.get("gate") or {}
            judged = (f"NDCG@10 {gate['candidate']['ndcg@10']:.3f} vs best sellers {gate['popularity']['ndcg@10']:.3f}"
                      f" and trending {gate['trending']['ndcg@10']:.3f} on the last week"
                      if "candidate" in gate and "skipped" not in gate else gate.get("skipped", "gate off"))
            if gate.get("verdict") == "below_baseline":  # a first model that lost: published, personalized left to it
                judged += f" (below {gate['baseline'].replace('_', ' ')}, which serves personalized answers)"
            print(f"  published {run['version']}: {run['users']} shoppers, {run['items']} products, "
                  f"{run['events']} events; quality gate: {judged}")

        titles = {p.product_id: f"{p.title} ({p.category})" for p in store.products}
        shop = store.config.shop
        buyers = [c for c in store.customers if len(c.favourites) == 1][:2]
        coffee = next(p for p in store.products if p.category == "Coffee")
        runner = next(p for p in store.products if p.category == "Running")
        viewed = [p.product_id for p in store.products if p.category == "Yoga"][:3]
        calls = [(f"customer {c.customer_id}, who shops {c.favourites[0]}",
                  f"{base}/recommend?shop={shop}&customer_id={c.customer_id}&n=5") for c in buyers]
        calls += [
            ("a customer the store has never seen", f"{base}/recommend?shop={shop}&customer_id=1&n=5"),
            ("a guest who just viewed three Yoga products",
             f"{base}/recommend?shop={shop}&product_ids={','.join(viewed)}&n=5"),
            (f"the product page of {titles[coffee.product_id]}",
             f"{base}/recommend?shop={shop}&intent=related&product_id={coffee.product_id}&n=5"),
            (f"a cart holding {titles[runner.product_id]}",
             f"{base}/recommend?shop={shop}&intent=complementary&product_ids={runner.product_id}&n=5"),
            ("what is trending in the store", f"{base}/recommend?shop={shop}&intent=trending&n=5"),
        ]
        print("\nTry these:")
        for label, url in calls:
            body = requests.get(url, timeout=10).json()
            fallback = (f" (fell back from {body['fallback_from']}: {body['fallback_reason']})"
                        if body.get("fallback_from") else "")
            print(f"\n# {label}\ncurl '{url}'")
            print(f"  → strategy {body['strategy']}{fallback}, model {body['model_version']}:")
            for item in body["recommendations"]:
                because = f", because of {titles.get(item['because'], item['because'])}" if item.get("because") else ""
                print(f"    {item['product_id']}  {titles.get(item['product_id'], '?')}  "
                      f"[{item['strategy']} {item['score']:.3f}{because}]")

        print("\nMeasuring: simulated shoppers on a second instance with CONTROL_PERCENT=25, their views, clicks and"
              " purchases through POST /collect, then GET /report")
        measuring_port = _free_port()
        measuring = start_server({**env, "CONTROL_PERCENT": "25", "REPORT_TOKEN": env["REPORT_TOKEN"]}, measuring_port)
        try:
            body = measure_storefront(store, f"http://127.0.0.1:{measuring_port}", env["REPORT_TOKEN"])
        finally:
            measuring.terminate()
            measuring.wait(timeout=10)
        arms, lift = body["by_arm"], body["by_arm"]["lift"]
        for arm in ("model", "control"):
            figures = arms[arm]
            print(f"  {arm:8s}{figures['answers_viewed']:4d} answers, {figures['products_shown']:4d} products shown, "
                  f"{figures['clicks']:3d} clicks ({_percent(figures['click_through_rate'])}), "
                  f"{figures['attributed_purchases']:3d} purchases, ${figures['attributed_revenue'] or 0:.2f}")
        interval = body["by_arm"]["lift_interval"]["click_through_rate"]
        print(f"  click-through lift of the model over best sellers: {_percent(lift['click_through_rate'])}"
              + (f" (95%: {_percent(interval[0])} to {_percent(interval[1])})" if interval else ""))
        if args.no_serve:
            return 0
        print(f"\nServing on {base} (/recommend, /webhooks, /train, /report, /healthz). Ctrl-C stops.")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.wait()
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())

"""bench/results/perf.md from perf.json: every figure beside its floor or peer, goals first."""

from __future__ import annotations

from bench import start_timeline
from bench.stats import INTERVAL_RESAMPLES, ratio


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _x(value: float) -> str:
    return f"{value:.2f}×"


def _warm_table(w: dict) -> str:
    """One warm-latency measurement: the floor, implicit, each intent of ours (and the answer cache, if timed)."""
    floor = w["floor"]

    def row(label: str, s: dict, vs_implicit: str = "") -> list:
        return [label, s["p50_ms"], s["p99_ms"], s["max_ms"], _x(s["p99_ms"] / floor["p99_ms"]), vs_implicit]

    rows = [row("floor: matvec + argpartition", floor), row("implicit recommend, fold-in", w["implicit_fold_in"], "1.00×")]
    if "implicit_user_factor" in w:
        rows.append(row("implicit recommend, user factor", w["implicit_user_factor"]))
    rows += [row(f"ours: {intent} ({n['strategy']})", n, _x(n["p99_vs_implicit_fold_in"]))
             for intent, n in w["intents"].items()]
    personalized = w["intents"].get("personalized", {})
    for turn, label in (("first_answers", "a shopper's first answer here"), ("repeat_answers", "a shopper asked again")):
        if turn in personalized:
            s = personalized[turn]
            rows.append(row(f"ours: personalized, {label} ({s['n']} of the calls)", s,
                            _x(s["p99_ms"] / w["implicit_fold_in"]["p99_ms"])))
    if "cached_answer" in w:
        rows.append(row("ours: a repeated related request (answer cache)", w["cached_answer"]))
    return _table(["path", "p50", "p99", "max", "p99 vs floor", "p99 vs implicit fold-in"], rows)


def _code(meta: dict) -> str:
    start, end = meta.get("code_at_start"), meta.get("code_at_end")
    if not start:
        return ""
    text = f" Code: commit {start['commit']}" + (f" plus uncommitted {', '.join(start['changed'])}" if start["changed"] else "")
    if end and end != start:
        text += f"; **the code changed during the run** (at the end: {end['commit']}" + (
            f" plus {', '.join(end['changed'])})" if end["changed"] else ")")
    return text + "."


def _cpu_by_section(meta: dict) -> list[str]:
    """One line: each section's steal and busy shares of the machine's CPU time (bench.stats.CpuShares)."""
    shares = meta.get("cpu_by_section")
    if not shares:
        return []
    parts = [f"{section} {v['steal_pct']}% ({v['busy_pct']}% busy)" for section, v in shares.items()]
    return ["", "CPU time taken by the hypervisor for other guests while this VM had work (steal), by section: "
            + ", ".join(parts) + "."]


def _batch_steal(level: dict) -> str:
    """The steal share of the worst of a level's timed batches, ours and the floor's, or "—" (not recorded)."""
    shares = [level[side].get("steal_pct") for side in ("ours", "floor")]
    return " / ".join("—" if share is None else f"{share}%" for share in shares)


def _interval(goal: dict) -> str:
    """A goal's bootstrap interval as "low–high", or "—" where there is none (sizes, memory, webhooks, training)."""
    interval = goal.get("interval")
    return f"{interval[0]}–{interval[1]}" if interval else "—"


def _steal_of(meta: dict, goal: dict) -> str:
    """The steal share of the section a goal's timing comes from, or "—" (not recorded, or not a timing), and
    that of the worst of the goal's own timed batches where it was recorded (the webhooks over HTTP)."""
    section = goal.get("section")
    share = (meta.get("cpu_by_section") or {}).get(section) if section else None
    text = f"{share['steal_pct']}%" if share else "—"
    if goal.get("batch_steal_pct") is not None:
        text += f" (its worst batch: {goal['batch_steal_pct']}%)"
    return text


def markdown(results: dict) -> str:
    meta, m = results["meta"], results["meta"]["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)"
                     for b in m["blas"]) or "none found"
    out = [
        "# Performance against floors measured in the same run",
        "",
        f"`{meta['command']}` — {meta['mode']} mode, {meta['date']}, {meta.get('seconds', '?')} s.  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, numpy {m['numpy']}, BLAS {blas},"
        f" OPENBLAS_CORETYPE={m['openblas_coretype'] or 'unset'}. Goals stated at 100k items are judged at"
        f" {meta['reference_size']:,} items." + _code(meta),
        *_cpu_by_section(meta),
        "",
        "## Goals",
        "",
        _table(["goal", "measured", "95% interval, rounds resampled", "met", "steal in its section"],
               [[g["goal"], g["measured"], _interval(g), "yes" if g["met"] else "**no**", _steal_of(meta, g)]
                for g in results["goals"]]),
        "",
        "The interval is where the ratio would have landed, 19 times in 20, had other rounds of the same run been"
        " timed: the rounds (each one pass over every variant, or one round of starts) drawn again with"
        f" replacement {INTERVAL_RESAMPLES:,} times, both sides of a round together (`bench.stats.ratio_interval`)."
        " It shows how much of a ratio is the luck of the rounds; it does not widen for what slowed a whole run.",
    ]

    cold = results["cold_start"]
    floor = cold["floor"]
    pinned = cold.get("floor_one_blas_thread")  # runs before it was measured have none

    def floor_row(label: str, f: dict) -> list:
        return [label, f["listen_median_s"], f["first_ok_median_s"], _x(ratio(f["first_ok_median_s"],
                floor["first_ok_median_s"])), "", f["startup_cpu_median_s"],
                _x(ratio(f["startup_cpu_median_s"], floor["startup_cpu_median_s"])), "",
                f["cpu_ms_per_request_mixed_intents"], f["first_ok_samples_s"]]

    def versus_pinned(c: dict, key: str) -> str:
        return _x(ratio(c[key], pinned[key])) if pinned else "—"

    out += ["", "## Cold start (spawn → first 200)", "", cold["method"] + ".", "",
            _table(["instance", "port open (median s)", "first 200 (median s)", "vs floor", "vs floor, one BLAS thread",
                    "startup CPU s", "startup CPU vs floor", "startup CPU vs floor, one BLAS thread",
                    "CPU ms/request after", "samples s"],
                   [floor_row("floor (numpy + constant)", floor)]
                   + ([floor_row("floor, one BLAS thread (OPENBLAS_NUM_THREADS=1, as main.py sets it)", pinned)]
                      if pinned else [])
                   + [[c["label"], c["listen_median_s"], c["first_ok_median_s"], _x(c["ratio_first_ok"]),
                       versus_pinned(c, "first_ok_median_s"), c["startup_cpu_median_s"],
                       _x(ratio(c["startup_cpu_median_s"], floor["startup_cpu_median_s"])),
                       versus_pinned(c, "startup_cpu_median_s"),
                       c["cpu_ms_per_request_mixed_intents"], c["first_ok_samples_s"]]
                      for c in cold["configs"]]),
            "", "Startup CPU: the instance's processes' CPU seconds from spawn to the first 200; time the hypervisor"
            " gave a core to another guest (steal) is not counted. The goal's floor imports numpy as a function"
            " does by default, and OpenBLAS starts a thread per core with it; `main.py` pins one BLAS thread before"
            " numpy loads, which spares ours that start: the floor with one BLAS thread is the fairer measure of"
            " what an instance adds, in CPU and in time.",
            "", "Where the first request's extra time goes (in process, median s):", "",
            _table(["instance", "read .npz", "sha256 (publishing only, not loads)", "parse + check + validate", "ServingModel",
                    "catalog snapshot + mask"],
                   [[c["label"], *c["load_breakdown"].values()] for c in cold["configs"]]),
            "", f"Import in a fresh interpreter: `import main` {cold['imports']['import_main_s']} s, "
                f"`import functions_framework, numpy` {cold['imports']['import_floor_s']} s."]
    if cold.get("timeline"):
        out += ["", f"Where each start's time goes, timed inside its processes (`bench.start_timeline`: "
                    f"{cold['timeline']['repeats']} more start{'s' if cold['timeline']['repeats'] != 1 else ''} of each"
                    " configuration up to 100k items after the measured"
                    " ones; each step's median ms after the step before; listening is when the client's poll first"
                    " connected, load and loaded the worker's first model load):", "",
                start_timeline.table(cold["timeline"]["steps_ms"], gaps=True)]

    warm = results["warm_latency"]
    out += ["", "## Warm latency in process (ms)", "", warm["method"] + ".", ""]
    for size in warm["sizes"]:
        for blas_key, blas_label in (("blas_default_threads", "BLAS default threads"), ("blas_one_thread", "BLAS 1 thread")):
            w = size[blas_key]
            out += [f"**{size['items']:,} items, {blas_label}** ({w['floor']['n']} calls each)", "", _warm_table(w), ""]
    for key, blas_label in (("with_catalog", "BLAS default threads"), ("with_catalog_one_thread", "BLAS 1 thread")):
        w = warm.get(key)
        if w:
            out += [f"**{w['items']:,} items with every item in the catalog (products and variants rows), {blas_label}**"
                    f" ({w['floor']['n']} calls each)", "", _warm_table(w), ""]
    trained = warm.get("trained_one_thread")
    if trained:
        head = trained["norm_head"]
        out += [f"**{trained['items']:,} items, a model our training made from power-law events"
                f" (`bench.synthetic.trained_factors`: popular items long, rare ones short), BLAS 1 thread**"
                f" ({trained['floor']['n']} calls each)", "", _warm_table(trained), "",
                f"Its NormHead: {head['rows']:,} rows (the largest norms); it gave {head['hits']} of the"
                f" {head['tries']} personalized answers asked of it (the rest scored every item)."
                if head["rows"] else "It got no NormHead (too few items, or norms too equal): every answer scored"
                " every item.", ""]
    postgres = warm.get("with_postgres_one_thread")
    if postgres and "skipped" in postgres:
        out += [f"With the events in PostgreSQL: skipped ({postgres['skipped']}).", ""]
    elif postgres:
        out += [f"**{postgres['items']:,} items, the shoppers' events in {postgres['event_store']} (no catalog rows),"
                f" BLAS 1 thread** ({postgres['floor']['n']} calls each)", "", _warm_table(postgres), ""]
    refresh = warm["catalog_refresh"]
    out += [f"Catalog refresh (once per CATALOG_TTL_SECONDS, paid by one request): {refresh['products']:,} products"
            f" {refresh['median_s'] * 1e3:.3g} ms vs sqlite3 fetch of the same rows {refresh['floor_median_s'] * 1e3:.3g} ms"
            f" ({_x(refresh['ratio'])}).", ""]
    depth = warm.get("history_depth")
    if depth:
        out += [f"A shopper's latest {depth['limit']} events (the read a personalized answer starts with), median ms"
                " by how many events the shopper has; the floor is the same read for the fewest:", "",
                _table(["store", *(f"{row['events']:,} events" for row in next(iter(depth["backends"].values())))],
                       [[backend, *(f"{row['median_ms']} ({_x(row['vs_floor'])})" for row in rows)]
                        for backend, rows in depth["backends"].items()]), ""]
        plans = depth.get("postgresql_plans")
        if plans:
            out += [f"PostgreSQL's read grew with the events; its plans for {plans['user_key']} right after"
                    " (auto_explain, the statements inside the function included):", "", "```", plans["nested"], "```", ""]
    for profile in warm["profiles"]:
        catalog = f" with {profile['catalog_rows']:,} catalog rows" if profile.get("catalog_rows") else ""
        out += [f"Profile, {profile['intent']} at {profile['items']:,} items{catalog} ({profile['calls']} calls,"
                f" {profile['wall_ms_per_call']} ms per call under cProfile), functions by own time:", "",
                _table(["function", "own ms per call", "share", "calls per request"],
                       [[r["function"], r["own_ms_per_call"], f"{r['share']:.0%}", r["calls_per_request"]]
                        for r in profile["top_own_time"]]), ""]

    http = results["http"]
    out += [f"## HTTP on loopback (personalized, {http['items']:,} items; gunicorn {http['gunicorn_workers']} worker ×"
            f" {http['gunicorn_threads']} threads)", ""]
    for run in http["runs"]:
        out += [f"**{run['label']}**", "",
                _table(["concurrency", "ours p50 ms", "ours p99 ms", "ours req/s", "floor p50 ms", "floor p99 ms",
                        "floor req/s", "req/s vs floor", "server CPU ms/request", "errors"],
                       [[lv["concurrency"], lv["ours"]["p50_ms"], lv["ours"]["p99_ms"], lv["ours"]["rps"],
                         lv["floor"]["p50_ms"], lv["floor"]["p99_ms"], lv["floor"]["rps"], _x(lv["rps_vs_floor"]),
                         lv["ours"]["server_cpu_ms_per_request"], lv["ours"]["errors"]] for lv in run["levels"]]), ""]
    out += [f"Bounded at {http['bounds']['max_requests']} requests or {http['bounds']['max_seconds']} s per level;"
            " the load client (one forked process per concurrent client, each with a keep-alive http.client"
            " connection) shares the two cores with the server; requests are signed per call as Shopify's app"
            " proxy signs them.", ""]

    ingest = results["ingest"]
    sq = ingest["sqlite"]
    rows = [["SQLite, in process (test client)", sq["in_process"]["p50_ms"], sq["in_process"]["p99_ms"],
             sq["in_process"]["deliveries_per_s"], f"storage floor: p99 {sq['storage_floor']['p99_ms']} ms,"
             f" {sq['storage_floor']['deliveries_per_s']}/s → {_x(sq['in_process']['p99_vs_storage_floor'])} p99", "", ""]]
    rows += [[f"SQLite, HTTP, concurrency {lv['concurrency']}", lv["ours"]["p50_ms"], lv["ours"]["p99_ms"],
              lv["ours"]["deliveries_per_s"], f"bare function: p99 {lv['floor']['p99_ms']} ms, {lv['floor']['deliveries_per_s']}/s"
              f" → {_x(lv['rate_vs_floor'])} rate", lv["ours"]["server_cpu_ms_per_delivery"], _batch_steal(lv)]
             for lv in sq["http"]]
    pg = ingest["postgresql"]
    if "skipped" not in pg:
        rows += [["PostgreSQL, in process", pg["in_process"]["p50_ms"], pg["in_process"]["p99_ms"],
                  pg["in_process"]["deliveries_per_s"], "", "", ""]]
        rows += [[f"PostgreSQL, HTTP, concurrency {lv['concurrency']}", lv["ours"]["p50_ms"], lv["ours"]["p99_ms"],
                  lv["ours"]["deliveries_per_s"], f"bare function {lv['floor']['deliveries_per_s']}/s",
                  lv["ours"]["server_cpu_ms_per_delivery"], _batch_steal(lv)] for lv in pg["http"]]
    out += [f"## Webhook ingest (signed {ingest['topic']}, {ingest['lines_per_delivery']} lines each; Shopify waits"
            f" {ingest['shopify_deadline_s']:g} s)", "",
            _table(["path", "p50 ms", "p99 ms", "deliveries/s", "floor", "server CPU ms/delivery",
                    "steal, the worst batch: ours / floor"], rows), "",
            "Server CPU counts the function's processes only (not PostgreSQL's). "
            f"Timed after {5} warm-up deliveries; the very first delivery (opening the store) took"
            f" {sq['in_process'].get('first_delivery_ms')} ms in process and {sq['http'][0].get('first_delivery_ms')} ms"
            " over HTTP (SQLite)" + ("" if "skipped" in pg else f", {pg['in_process'].get('first_delivery_ms')} ms and"
                                     f" {pg['http'][0].get('first_delivery_ms')} ms (PostgreSQL)") + "."]
    per_batch = [f"{name} at {lv['concurrency']} at once " + ", ".join(f"{b['p99_ms']:g}" for b in lv["ours"]["batches"])
                 for name, store in (("SQLite", sq), ("PostgreSQL", pg)) if "http" in store
                 for lv in store["http"] if lv["ours"].get("batches")]
    if per_batch:
        out += ["", "Over HTTP, p50 and p99 are over every delivery of the level's timed batches, each batch followed by"
                    " the floor's; each batch's own p99 (ms): " + "; ".join(per_batch) + "."]
    if "skipped" in pg:
        out += ["", f"PostgreSQL skipped: {pg['skipped']}."]

    t = results["training"]
    found = results.get("round_trips")
    if found:  # runs before round 30 of bench/PERFORMANCE.md have none
        from bench import answer_probe, delivery_probe

        out += ["", "## Round trips to PostgreSQL", "", found["method"] + ".", "", "Answers:", "",
                answer_probe.table(found["answers"]), "", "Webhook writes:", "", delivery_probe.table(found["deliveries"])]
    out += ["", f"## Training ({t['events']:,} events, {t['users']:,} users × {t['items']:,} items, {t['nonzeros']:,}"
                f" non-zeros; {t['factors']} factors, {t['iterations']} iterations)", "",
            _table(["run", "median s", "samples s", "CPU s of each sample (every thread)"],
                   [["ours: train_and_publish", t["train_and_publish_median_s"], t["train_and_publish_samples_s"],
                     t.get("train_and_publish_cpu_samples_s", "—")],
                    ["peer: implicit fit, same matrix", t["implicit_fit_median_s"], t["implicit_fit_samples_s"],
                     t.get("implicit_fit_cpu_samples_s", "—")],
                    ["ratio: the median of the pairs' ratios (the goal's figure)", _x(t["ratio"]), "", ""],
                    ["ratio of the medians", _x(t.get("ratio_of_medians", t["ratio"])), "", ""]]),
            "", "Stages of ours, timed once on their own (s): "
            + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v}" for k, v in t["stages_s"].items()) + "."]
    if t.get("method"):
        out += ["", f"Method: {t['method']}"]
    if t.get("pair_ratios"):
        out += ["", "Each pair's ratio (ours / peer, run back to back, ours first in every other pair): " + ", ".join(_x(r) for r in t["pair_ratios"]) + "."]

    out += ["", "## Artifact size (floor: float16 factors alone, 2 bytes per item·factor)", "",
            _table(["artifact", "items", "MB", "bytes/item·factor", "vs floor", "largest arrays (bytes/item)",
                    "np.savez_compressed: bytes/item·factor"],
                   [[a["label"], f"{a['items']:,}", round(a["bytes"] / 1e6, 1), a["bytes_per_item_factor"],
                     _x(a["ratio_vs_float16_floor"]),
                     ", ".join(f"{k} {v}" for k, v in list(a["bytes_per_item_by_array"].items())[:5]),
                     a["np_savez_compressed"]["bytes_per_item_factor"] if a.get("np_savez_compressed") else "—"]
                    for a in results["size"]["artifacts"]])]

    mem = results["memory"]
    f = mem["floor"]
    out += ["", "## Instance memory after loading and serving (MiB)", "", mem["method"] + ".", "",
            _table(["instance", "master RSS", "worker RSS", "worker peak RSS", "PSS sum", "PSS vs floor",
                    "peak upper bound"],
                   [["floor", f["master_rss_mib"], f["worker_rss_mib"], f["worker_peak_rss_mib"], f["pss_sum_mib"], "1.00×",
                     f["instance_peak_upper_bound_mib"]]]
                   + [[i["label"], i["master_rss_mib"], i["worker_rss_mib"], i["worker_peak_rss_mib"], i["pss_sum_mib"],
                       _x(i["pss_vs_floor"]), i["instance_peak_upper_bound_mib"]] for i in mem["instances"]])]
    full = mem.get("caches_full")
    if full:
        b, a = full["before"], full["after"]
        out += ["", f"With the caches full: {full['items']:,} items and {full['catalog_rows']:,} catalog rows, after the"
                    f" warm requests, then after {full['requests']:,} related requests for as many products"
                    f" ({full['seconds']} s): peak upper bound {full['before_peak_upper_bound_mib']} →"
                    f" {full['after_peak_upper_bound_mib']} MiB, PSS sum {b['pss_sum_mib']} → {a['pss_sum_mib']},"
                    f" the worker's anonymous memory (heap: the caches) {b.get('worker_anon_rss_mib', '?')} →"
                    f" {a.get('worker_anon_rss_mib', '?')}. The rest is the SQLite catalog's file pages the cards were"
                    " read from: each of the worker's threads has its own connection, each reads the file through a"
                    " map of its own, and RSS counts a page once per map that touched it (PSS splits it between them,"
                    " as a container's memory limit counts it once); a PostgreSQL deployment maps no such file."]
    trained = mem.get("trained_with_head")
    if trained:
        head = (f"its NormHead ({trained['head_rows']:,} rows, built in {trained['head_build_ms']} ms by the instance's"
                " log line)" if trained["head_rows"] else "no NormHead (none in the instance's log)")
        out += ["", f"A trained model ({trained['items']:,} items, unequal norms), after the warm requests, then after"
                    f" {head} and a personalized answer for each of {trained['shoppers']} shoppers: peak upper bound"
                    f" {trained['before_peak_upper_bound_mib']} → {trained['after_peak_upper_bound_mib']} MiB,"
                    f" worker RSS {trained['before']['worker_rss_mib']} → {trained['after']['worker_rss_mib']}, PSS sum"
                    f" {trained['before']['pss_sum_mib']} → {trained['after']['pss_sum_mib']}."]

    c = results["cost"]
    p = c["prices"]
    out += ["", "## Cost on Cloud Run functions (list prices)", "",
            f"Prices ({p['currency']}, {p['region_tier']}, {p['billing']}, read {p['read_on']}): CPU"
            f" ${p['cpu_per_vcpu_s']:.8f} per vCPU-s, memory ${p['memory_per_gib_s']:.8f} per GiB-s,"
            f" ${p['per_million_requests']:.2f} per million requests.", "",
            "```", c["formula"], "```", "",
            f"Measured: {c['measured_at']}. Tier \"smallest fitting\": the smallest Cloud Run functions memory tier"
            f" the instance's peak fills to at most {c['headroom']:.0%}, with that tier's default vCPU.", "",
            _table(["function", "CPU ms/request", "instance peak MiB", "tier", "billed ms/request",
                    "$ per million, back to back", "$ per million, isolated (100 ms steps)",
                    "one warm instance $/month (upper bound)"],
                   [[r["label"], r["cpu_ms_per_request"], r["instance_memory_mib"],
                     f"{r['tier_mib']} MiB / {r['vcpu']} vCPU ({r['tier_from']}{'' if r['fits'] else ', does NOT fit'})",
                     r["billed_ms_per_request_busy"], r["busy_usd_per_million"], r["isolated_usd_per_million"],
                     r["warm_instance_usd_per_month_upper_bound"]] for r in c["rows"]]),
            "", c["free_tier_note"][0].upper() + c["free_tier_note"][1:] + ".", "", "Sources:"]
    out += [f"- {s}" for s in p["sources"]]
    out += ["", "Managed alternatives (pricing models only, as published):"]
    out += [f"- {a['service']} ({a['source']}): {a['model']}. Unit prices: {a['unit_prices']}."
            for a in c["managed_alternatives"]]
    return "\n".join(out) + "\n"

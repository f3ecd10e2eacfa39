"""What a million recommendations and a million webhooks cost on Cloud Run functions, from measured CPU and memory.

    billed_s(request) = cpu_s / vcpu                      (the request's CPU time at the tier's vCPU share)
    cost(request)     = billed_s · (vcpu · P_cpu + GiB · P_mem) + P_request
    isolated request  : billed_s rounded up to 0.1 s     (Cloud Run bills instance time in 100 ms steps)
    one warm instance : seconds_per_month · (vcpu · P_cpu_idle + GiB · P_mem_idle)

One CPU-second on the benchmark machine is taken as one vCPU-second on Cloud Run. Prices are
parameters; PRICES says where each came from and how sure it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Cloud Run functions memory tiers and the vCPU each gets by default
# (cloud.google.com/functions/docs/configuring/memory, "Configure memory and vCPU limits").
TIERS_MIB_VCPU = ((128, 0.083), (256, 0.167), (512, 0.333), (1024, 0.583), (2048, 1.0), (4096, 2.0))
HEADROOM = 0.75  # pick the smallest tier whose memory the instance fills at most to 75 %
SECONDS_PER_MONTH = 730 * 3600

PRICES = {
    "currency": "USD",
    "region_tier": "Tier 1 (e.g. us-central1)",
    "billing": "request-based billing (CPU only during requests; the default)",
    "read_on": "2026-11-22",
    "cpu_per_vcpu_s": 0.000024,
    "memory_per_gib_s": 0.0000025,
    "per_million_requests": 0.40,
    "free_tier_per_month": {"vcpu_s": 180_000, "gib_s": 360_000, "requests": 2_000_000},
    "idle_min_instance_per_vcpu_s": None,
    "idle_min_instance_per_gib_s": None,
    "sources": [
        "cloud.google.com/run/pricing (stored copy): request-based Tier 1 CPU $0.00002400 per vCPU-second; free tier"
        " 180,000 vCPU-s, 360,000 GiB-s, 2 million requests per month; instance-based ('CPU always allocated')"
        " CPU $0.00001800 per vCPU-second",
        "memory $0.00000250 per GiB-second and $0.40 per million requests: the official excerpt available here was cut"
        " before those cells; the figures are the ones third-party summaries dated 2025 to mid-2026 quote"
        " (cloudwebschool.com Cloud Run cost calculator, cloudguard.dev 'as of early 2026', cloudchipr.com 2025)",
        "idle minimum-instance rates: Google's table lists a separate, lower rate for idle minimum instances under"
        " request-based billing; it could not be verified here, so the warm-instance cost below is an UPPER BOUND"
        " computed at the active rates",
    ],
}

MANAGED_ALTERNATIVES = [
    {"service": "Amazon Personalize", "source": "aws.amazon.com/personalize/pricing",
     "model": "pay per use, no minimum: per GB of data ingested (streamed events and bulk imports), per training hour"
              " (one hour of 4 vCPU and 8 GiB; Personalize may use bigger instances, so billed hours can exceed elapsed"
              " hours), and real-time recommendations by throughput: you set a minimum provisioned TPS and pay for the"
              " larger of it and the actual TPS (averaged over 5-minute windows)",
     "unit_prices": "not verified here"},
    {"service": "Google Vertex AI Search for commerce (Retail API)", "source": "cloud.google.com/retail/docs/pricing",
     "model": "search and browse requests $2.50 per 1,000; importing and managing user events and catalog is free;"
              " recommendations are billed separately (prediction requests, plus model training and tuning) with"
              " $600 of free trial credit for recommendations that expires six months after sign-up",
     "unit_prices": "recommendation prediction and training prices not verified here"},
]


def tier_for(memory_mib: float) -> tuple[int, float]:
    for mib, vcpu in TIERS_MIB_VCPU:
        if memory_mib <= HEADROOM * mib:
            return mib, vcpu
    return TIERS_MIB_VCPU[-1]


def per_million(cpu_ms: float, tier_mib: int, vcpu: float, prices: dict = PRICES) -> dict:
    """Cost of a million requests each using `cpu_ms` of CPU, back to back and isolated."""
    gib = tier_mib / 1024
    rate = vcpu * prices["cpu_per_vcpu_s"] + gib * prices["memory_per_gib_s"]  # $ per second of instance
    busy_s = cpu_ms / 1e3 / vcpu
    isolated_s = max(0.1, math.ceil(busy_s / 0.1 - 1e-9) * 0.1)
    request = prices["per_million_requests"] / 1e6
    return {
        "billed_ms_per_request_busy": round(busy_s * 1e3, 2),
        "busy_usd_per_million": round(1e6 * (busy_s * rate + request), 2),
        "isolated_usd_per_million": round(1e6 * (isolated_s * rate + request), 2),
    }


def warm_instance_month(tier_mib: int, vcpu: float, prices: dict = PRICES) -> float:
    """Upper bound: a minimum instance billed all month at the active rates (idle rates unverified)."""
    cpu = prices["idle_min_instance_per_vcpu_s"] or prices["cpu_per_vcpu_s"]
    mem = prices["idle_min_instance_per_gib_s"] or prices["memory_per_gib_s"]
    return round(SECONDS_PER_MONTH * (vcpu * cpu + tier_mib / 1024 * mem), 2)


@dataclass(frozen=True)
class Scenario:
    """One function's measured CPU per request and instance memory, on a tier chosen by size or fixed."""

    label: str
    cpu_ms: float  # server CPU per request, measured
    memory_mib: float  # instance peak, measured
    tier: tuple[int, float] | None = None  # (MiB, vCPU) to use; None: the smallest that fits
    tier_from: str = "smallest fitting tier"


def deploy_tiers() -> dict[str, tuple[int, float]]:
    """(MiB, vCPU) of each function in deploy/deploy.py, when that module can be read; else {}."""
    try:
        from deploy.deploy import FUNCTIONS
    except Exception:  # another team's module: its absence or shape must not stop the benchmark
        return {}
    tiers = {}
    for spec in FUNCTIONS:
        memory = str(spec.memory)
        mib = int(memory[:-2]) * (1024 if memory.endswith("Gi") else 1) if memory[-2:] in ("Mi", "Gi") else None
        if mib:
            tiers[spec.entry_point] = (mib, float(spec.cpu))
    return tiers


def estimate(scenarios: list[Scenario], measured_at: str) -> dict:
    """Per-million costs and a warm instance's monthly cost for each scenario."""
    rows = []
    for scenario in scenarios:
        mib, vcpu = scenario.tier or tier_for(scenario.memory_mib)
        rows.append({"label": scenario.label, "cpu_ms_per_request": round(scenario.cpu_ms, 3),
                     "instance_memory_mib": scenario.memory_mib, "tier_mib": mib, "vcpu": vcpu,
                     "tier_from": scenario.tier_from, "fits": scenario.memory_mib <= mib,
                     **per_million(scenario.cpu_ms, mib, vcpu),
                     "warm_instance_usd_per_month_upper_bound": warm_instance_month(mib, vcpu)})
    return {
        "formula": __doc__.strip().split("\n\n")[1] if __doc__ else "",
        "measured_at": measured_at, "headroom": HEADROOM, "prices": PRICES, "rows": rows,
        "free_tier_note": "the monthly free tier (180,000 vCPU-s, 360,000 GiB-s, 2 million requests) is not"
                          " subtracted; a small shop's whole month may fit inside it",
        "managed_alternatives": MANAGED_ALTERNATIVES,
    }

"""Provenance in sentences: the saved settings (meters, load, constraints, idle power, study, impact inputs) in words."""

from __future__ import annotations

from typing import Any

from tuner.report.data import load_words

METER_NAMES = {"nvml": "NVML (GPU energy counter)", "rapl": "RAPL (CPU package counters)",
               "estimate": "estimated from the server's CPU time", "memory": "server memory"}


def meters_words(meters: dict[str, Any]) -> str:
    """'estimated from the server's CPU time (TDP 20 W for 2 logical cores, from 10 W per logical core, ...)'."""
    if not meters:
        return "not recorded"
    parts = []
    for name, details in meters.items():
        details = details if isinstance(details, dict) else {}
        label = METER_NAMES.get(str(details.get("name", name)), str(details.get("name", name)))
        extra = []
        if details.get("tdp_w") is not None:
            cores = f" for {details['logical_cores']} logical cores" if details.get("logical_cores") else ""
            basis = f", from {details['tdp_basis']}" if details.get("tdp_basis") else ""
            extra.append(f"TDP {details['tdp_w']:g} W{cores}{basis}")
        if details.get("idle_fraction") is not None:
            extra.append(f"idle share {details['idle_fraction']:.0%} of TDP")
        if details.get("cpu_model"):
            extra.append(f"CPU {details['cpu_model']}")
        parts.append(label + (f" ({'; '.join(extra)})" if extra else ""))
    return "; ".join(parts)


def constraints_words(constraints: dict[str, Any]) -> str:
    """'throughput at least 500 infer/s, p99 at most 50 ms; no memory limit'."""
    constraints = constraints or {}
    said, unset = [], []
    for key, text, unit, missing in (("min_throughput_per_s", "throughput at least", "infer/s", "no throughput floor"),
                                     ("max_p99_ms", "p99 latency at most", "ms", "no latency limit"),
                                     ("max_memory_mb", "server memory at most", "MB", "no memory limit")):
        value = constraints.get(key)
        if value is None:
            unset.append(missing)
        else:
            said.append(f"{text} {value:g} {unit}")
    if not said:
        return "none (every config that ran counts as feasible)"
    return ", ".join(said) + ("; " + ", ".join(unset) if unset else "")


def idle_words(summary: dict[str, Any]) -> str:
    """'3.2 W in total (cpu 3.2 W), server up, no load'."""
    total = summary.get("idle_power_total_w")
    if total is None:
        return "not measured"
    domains = summary.get("idle_power_w") or {}
    per = ", ".join(f"{name} {value:.1f} W" for name, value in domains.items())
    accounting = summary.get("energy_accounting")
    use = ("subtracted from every window (dynamic accounting)" if accounting == "dynamic"
           else "included in every figure (total accounting)")
    return f"{total:.1f} W in total{f' ({per})' if per else ''}, server up, no load; {use}"


def study_words(study: dict[str, Any]) -> str:
    """"Optuna study 'x' stored in sqlite:///…"."""
    study = study or {}
    if not study.get("storage"):
        return "not recorded"
    return f"Optuna study '{study.get('name')}' stored in {study.get('storage')}"


def impact_inputs_words(impact: dict[str, Any] | None) -> str:
    """The stated impact inputs and where each came from, or that none were given."""
    inputs = (impact or {}).get("inputs") or {}
    sources = inputs.get("sources") or {}
    if not sources:
        return ("none stated: figures per million inferences are in kWh at PUE 1 only; give --traffic, "
                "--carbon-intensity, --energy-price for yearly, carbon and cost figures")
    currency = inputs.get("currency") or "currency units"
    said = []
    if inputs.get("traffic_per_s") is not None:
        said.append(f"traffic {inputs['traffic_per_s']:,.6g} inferences/s (from {sources.get('traffic')})")
    if inputs.get("carbon_intensity_g_per_kwh") is not None:
        said.append(f"carbon intensity {inputs['carbon_intensity_g_per_kwh']:g} gCO2e/kWh "
                    f"(from {sources.get('carbon_intensity')})")
    if inputs.get("energy_price_per_kwh") is not None:
        said.append(f"energy price {inputs['energy_price_per_kwh']:g} {currency}/kWh (from {sources.get('energy_price')})")
    said.append(f"PUE {inputs.get('pue', 1.0):g} ({'from ' + sources['pue'] if 'pue' in sources else 'default'})")
    if inputs.get("machine_price_per_hour") is not None:
        said.append(f"machine price {inputs['machine_price_per_hour']:g} {currency}/hour "
                    f"(from {sources.get('gpu_hourly_price')})")
    missing = [what for key, what in (("traffic_per_s", "no traffic: no yearly figures"),
                                      ("carbon_intensity_g_per_kwh", "no carbon intensity: no carbon figures"),
                                      ("energy_price_per_kwh", "no energy price: no cost figures"))
               if inputs.get(key) is None]
    return "; ".join(said) + (f". {'; '.join(missing)}." if missing else ".")


def provenance_items(summary: dict[str, Any]) -> dict[str, str]:
    """Label -> sentence for the report's provenance list."""
    env = summary.get("environment") or {}
    gpu = (f"{env['gpu_models']} (driver {env.get('gpu_driver', '?')})" if env.get("gpu_models")
           else "none seen by NVML")
    return {
        "greentune": str(env.get("greentune")), "Triton server": str(env.get("triton_server")),
        "Triton binary / image": str(env.get("triton_binary")),
        "CPU": f"{env.get('cpu_model')} ({env.get('logical_cores')} logical cores)", "GPU / driver": gpu,
        "energy sources": ", ".join(summary.get("energy_sources") or []) or "none",
        "meters": meters_words(summary.get("meters") or {}),
        "idle power": idle_words(summary),
        "energy accounting": str(summary.get("energy_accounting")),
        "load": "every config driven the same way: " + load_words(summary.get("load") or {}),
        "constraints": constraints_words(summary.get("constraints") or {}),
        "impact inputs": impact_inputs_words(summary.get("impact")),
        "search space": str(summary.get("search_space")), "stop reason": str(summary.get("stop_reason")),
        "date": str(env.get("date")), "command line": str(env.get("command_line")),
        "Python / Optuna / tritonclient": f"{env.get('python')} / {env.get('optuna')} / {env.get('tritonclient')}",
        "OS": str(env.get("os")), "study": study_words(summary.get("study") or {}),
    }

"""The sidebar: model, workload, SLO, simulation and the configurations to compare.

Every group of fields comes from the schema (:func:`app.fields.form_fields`):
the scheduler parameters from the chosen scheduler's registered ``Params``
model, the length parameters from the chosen distribution's declared
parameters, the arrival parameters from the chosen process's ``uses``, and any
scenario section the page has no dedicated inputs for (a future technique list,
say) is drawn generically per configuration. Catalog choices (models, devices,
schedulers, routers, traces, formats) come from their registries.

Each function takes the values to start from (the loaded set-up) and returns
what the widgets now hold, in scenario-file form.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from app.checks import Issue
from app.fields import describe_field, form_fields, prune_defaults
from app.setup import CONFIG_SECTIONS, MAX_CONFIGURATIONS, SHARED_FIELDS, Configuration, template_configuration
from app.widgets import Form
from hwmodels.calibration.engines import engine_names
from hwmodels.device import DEVICES
from simulator.config.schema import DeploymentConfig, Scenario, SchedulerConfig, SimulationConfig
from simulator.costmodel.precision import BYTES_PER_ELEMENT
from simulator.metrics.slo import SLOConfig
from simulator.models import MODELS
from simulator.models.spec import ModelSpec
from simulator.routers import ROUTERS
from simulator.schedulers import SCHEDULERS
from simulator.techniques import TECHNIQUES
from traces.arrivals import ARRIVAL_PARAMETERS, ARRIVALS
from traces.catalog import list_traces
from traces.config import ColumnMap, LengthConfig, TraceConfig, WorkloadConfig
from traces.lengths import LENGTHS
from traces.loaders import TRACE_FORMATS

#: Where uploaded trace files are kept (named by content hash, so a changed file is a new path and a new run).
UPLOAD_DIR = Path(tempfile.gettempdir()) / "capsim-dashboard-uploads"
CUSTOM = "custom"
FROM_TRACE = "from trace"
DTYPE_FIELDS = ("weight_dtype", "kv_dtype", "activation_dtype")


def _canonical(registry: Any, name: Any) -> Any:
    """The registry's canonical id for ``name`` when it knows it, else ``name`` unchanged."""
    try:
        return registry.canonical(name) if isinstance(name, str) else name
    except Exception:  # noqa: BLE001 -- unknown names stay as typed; validation explains them
        return name


def _field(model: Any, name: str):
    return describe_field(name, model.model_fields[name])


# --------------------------------------------------------------------- model
def model_input(form: Form, ui: Any, initial: str | dict[str, Any]) -> str | dict[str, Any]:
    """A catalog model, or a custom architecture typed field by field (starting from a catalog entry)."""
    mode = ui.radio(
        "model", ["catalog", CUSTOM], index=1 if isinstance(initial, dict) else 0, horizontal=True,
        key=form.key("model.mode"), help=Scenario.model_fields["model"].description,
    )
    if mode == "catalog":
        start = _canonical(MODELS, initial) if isinstance(initial, str) else MODELS.names()[0]
        value = form.field(
            ui, _field(Scenario, "model"), "model", start, key_path="model.catalog", options=MODELS.names(),
            label="catalog model",
        )
        return value
    loaded = isinstance(initial, dict)
    templates = (["(as loaded)"] if loaded else []) + MODELS.names()
    first = _canonical(MODELS, initial) if isinstance(initial, str) else templates[0]
    template = ui.selectbox("start from", templates, index=templates.index(first) if first in templates else 0,
                            key=form.key("model.template"), help="catalog model whose numbers fill the fields below")
    values0 = initial if loaded and template == "(as loaded)" else MODELS.get(template).model_dump(mode="json")
    values0 = {**values0, "name": values0.get("name", "custom-model") if loaded else f"custom-{template}"}
    fields = form_fields(ModelSpec, exclude=("aliases", "source"))
    values = form.fields(ui, fields, "model", values0, key_prefix=f"model.custom.{template}")
    form.slots.reserve(ui, "model")
    return prune_defaults({k: v for k, v in values.items() if v is not None}, fields)


# ------------------------------------------------------------------ workload
def _source_of(workload: dict[str, Any]) -> str:
    trace = workload.get("trace") or {}
    arrival = _canonical(ARRIVALS, workload.get("arrival", "poisson"))
    needs_trace = arrival in ARRIVALS and ARRIVALS.get(arrival).needs_trace
    if trace.get("path"):
        return "file"
    return "replay" if needs_trace else "synthetic"


WORKLOAD_SOURCES = {
    "synthetic": "synthetic arrivals",
    "replay": "replay a shipped trace",
    "file": "trace file (upload or path)",
}


def workload_input(form: Form, ui: Any, initial: dict[str, Any]) -> dict[str, Any]:
    """Synthetic arrivals and lengths, a shipped trace replayed, or a trace file with a column mapping."""
    form.slots.reserve(ui, "workload")
    start = _source_of(initial)
    source = ui.radio(
        "traffic", list(WORKLOAD_SOURCES), index=list(WORKLOAD_SOURCES).index(start),
        format_func=WORKLOAD_SOURCES.get, key=form.key("workload.source"),
    )
    init = initial if source == start else {}
    if source == "synthetic":
        return _synthetic(form, ui, init)
    if source == "replay":
        return _replay(form, ui, init)
    return _trace_file(form, ui, init)


def _arrival(form: Form, ui: Any, init: dict[str, Any]) -> dict[str, Any]:
    """An open- or closed-loop arrival process (not trace replay) and the parameters it uses."""
    wf = {f.name: f for f in form_fields(WorkloadConfig)}
    choices = [n for n in ARRIVALS.names() if not ARRIVALS.get(n).needs_trace]
    first = _canonical(ARRIVALS, init.get("arrival", "poisson"))
    arrival = form.field(ui, wf["arrival"], "workload.arrival", first, options=choices)
    out: dict[str, Any] = {"arrival": arrival}
    uses = ARRIVALS.get(arrival).uses if arrival in ARRIVALS else frozenset()
    for param in ARRIVAL_PARAMETERS:
        if param in uses and param in wf:
            value0 = init.get(param, 4.0 if param == "qps" else None)
            value = form.field(ui, wf[param], f"workload.{param}", value0)
            if value is not None and value != wf[param].default:
                out[param] = value
    return out


def _starting_point(dist: str, role: str) -> dict[str, Any]:
    """Parameters a newly chosen length distribution starts from (typical chat lengths)."""
    n = 512 if role == "prompt" else 128
    return {
        "fixed": {"value": n},
        "uniform": {"low": max(1, n // 4), "high": 2 * n},
        "normal": {"mean": n, "std": n / 4},
        "lognormal": {"mean": n, "std": n / 2},
        "zipf": {"a": 1.2, "max": 8 * n},
        "empirical": {"trace": "sharegpt-lengths"},
    }.get(dist, {})


def _lengths(form: Form, ui: Any, init: dict[str, Any], has_trace: bool) -> dict[str, Any]:
    """Prompt and output length distributions; with a trace, each side may also come from it."""
    out: dict[str, Any] = {}
    for role in ("prompt", "output"):
        given = init.get(role) if isinstance(init.get(role), dict) else None
        options = ([FROM_TRACE] if has_trace else []) + LENGTHS.names()
        first = _canonical(LENGTHS, given.get("dist", "fixed")) if given else (FROM_TRACE if has_trace else "fixed")
        dist = form.field(
            ui, _field(LengthConfig, "dist"), f"workload.{role}.dist", first, options=options,
            label=f"{role} lengths",
        )
        if dist == FROM_TRACE:
            continue
        spec = LENGTHS.get(dist)
        fields = form_fields(LengthConfig, include=(*spec.required, *spec.optional))
        values0 = given if given and _canonical(LENGTHS, given.get("dist")) == dist else _starting_point(dist, role)
        values = form.fields(ui, fields, f"workload.{role}", values0, key_prefix=f"workload.{role}.{dist}")
        out[role] = {"dist": dist, **{k: v for k, v in values.items() if v is not None}}
        form.slots.reserve(ui, f"workload.{role}")
    return out


def _synthetic(form: Form, ui: Any, init: dict[str, Any]) -> dict[str, Any]:
    out = _arrival(form, ui, init)
    trace0 = (init.get("trace") or {}).get("name")
    ids = [t.id for t in list_traces()]
    trace = ui.selectbox(
        "lengths from a shipped trace", [None, *ids], index=([None, *ids].index(trace0) if trace0 in ids else 0),
        format_func=lambda t: "(no: distributions below)" if t is None else t, key=form.key("workload.lengths.trace"),
        help="Draw (prompt, output) pairs from a real trace's rows; arrivals stay synthetic.",
    )
    form.slots.reserve(ui, "workload.trace")
    if trace is not None:
        out["trace"] = {"name": trace}
    out.update(_lengths(form, ui, init, has_trace=trace is not None))
    return out


def _trace_options(form: Form, ui: Any, trace0: dict[str, Any]) -> dict[str, Any]:
    fields = form_fields(TraceConfig, exclude=("name", "path", "format", "columns"))
    values = form.fields(ui.expander("replay window and scaling"), fields, "workload.trace", trace0)
    return prune_defaults({k: v for k, v in values.items() if v is not None}, fields)


def _replay_rate(form: Form, ui: Any, init: dict[str, Any], source: str) -> dict[str, Any]:
    """``{"qps": rate}`` when the user asks to rescale a replayed trace to a request rate, else nothing.

    Why opt-in, with its own widget key: a replayed trace keeps its own timing. The synthetic arrivals' rate
    widget must not carry over (a shared key once kept ``qps: 4`` and replayed the Azure trace at 4/5.5 of its
    real speed without a word).
    """
    rescale = ui.checkbox(
        "rescale the trace to a request rate", value=init.get("qps") is not None,
        key=form.key(f"workload.{source}.rescale"),
        help="Off: the trace's own arrival times. On: its inter-arrival gaps are scaled to the mean rate below.",
    )
    if not rescale:
        return {}
    qps = form.field(ui, _field(WorkloadConfig, "qps"), "workload.qps", init.get("qps"),
                     key_path=f"workload.{source}.qps", label="rescale to (req/s)")
    if qps is None:
        form.issues.append(Issue("workload.qps", "give the request rate to rescale the trace to, or untick "
                                 "'rescale the trace to a request rate' to keep its own timing"))
        return {}
    return {"qps": qps}


def _replay(form: Form, ui: Any, init: dict[str, Any]) -> dict[str, Any]:
    trace0 = init.get("trace") or {}
    ids = [t.id for t in list_traces() if t.has_arrivals]
    name = form.field(ui, _field(TraceConfig, "name"), "workload.trace.name", trace0.get("name", ids[0]), options=ids,
                      label="shipped trace")
    form.slots.reserve(ui, "workload.trace")
    out: dict[str, Any] = {"arrival": "trace", **_replay_rate(form, ui, init, "replay")}
    out["trace"] = {"name": name, **_trace_options(form, ui, trace0)}
    out.update(_lengths(form, ui, init, has_trace=True))
    return out


def save_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded trace under :data:`UPLOAD_DIR`, named by its content hash."""
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name) or "trace.csv"
    path = UPLOAD_DIR / f"{hashlib.sha256(data).hexdigest()[:12]}-{safe}"
    if not path.exists():
        path.write_bytes(data)
    return path


def file_columns(path: str | Path) -> list[str]:
    """Column names of a CSV (header) or JSONL (first record's keys); empty when unreadable."""
    import json

    p = Path(path)
    if not p.is_file():
        return []
    try:
        if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            with p.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        return [str(k) for k in record] if isinstance(record, dict) else []
            return []
        return [str(c).strip() for c in pd.read_csv(p, nrows=0, skipinitialspace=True).columns]
    except (OSError, ValueError, UnicodeDecodeError):
        return []


def _trace_file(form: Form, ui: Any, init: dict[str, Any]) -> dict[str, Any]:
    trace0 = init.get("trace") or {}
    uploaded = ui.file_uploader(
        "upload a trace (CSV or JSONL)", type=["csv", "jsonl", "json", "ndjson"], key=form.key("workload.trace.upload"),
        help="Any CSV with a header or JSONL with one request per line; map its columns below.",
    )
    if uploaded is not None:
        path: Any = str(save_upload(uploaded.name, uploaded.getvalue()))
        ui.caption(f"stored as `{path}`")
    else:
        path = form.field(ui, _field(TraceConfig, "path"), "workload.trace.path", trace0.get("path"),
                          label="or a trace file path")
    form.slots.reserve(ui, "workload.trace")
    fmt = form.field(ui, _field(TraceConfig, "format"), "workload.trace.format", trace0.get("format", "auto"),
                     options=["auto", *TRACE_FORMATS.names()])
    trace: dict[str, Any] = {"path": path}
    if fmt != "auto":
        trace["format"] = fmt
    names = file_columns(path) if path else []
    if names and fmt in ("auto", "csv", "jsonl"):
        trace.update(_column_mapping(form, ui, names, trace0.get("columns") or {}))
    replay0 = not init or (_canonical(ARRIVALS, init.get("arrival")) in ARRIVALS
                           and ARRIVALS.get(_canonical(ARRIVALS, init.get("arrival"))).needs_trace)
    replay = ui.checkbox("replay the file's arrival times", value=replay0, key=form.key("workload.trace.replay"),
                         help="Off: use the file for lengths only, with synthetic arrivals.")
    if replay:
        out: dict[str, Any] = {"arrival": "trace", **_replay_rate(form, ui, init, "file")}
    else:
        out = _arrival(form, ui, init)
    out["trace"] = {**trace, **_trace_options(form, ui, trace0)}
    out.update(_lengths(form, ui, init, has_trace=True))
    return out


def _column_mapping(form: Form, ui: Any, names: list[str], columns0: dict[str, Any]) -> dict[str, Any]:
    ui.caption("column mapping: '(not set)' finds a column by its usual names (prompt_tokens, input_len, ...)")
    mapping: dict[str, Any] = {}
    for role in ("arrival", "prompt", "output"):
        value = form.field(
            ui, _field(ColumnMap, role), f"workload.trace.columns.{role}", columns0.get(role), options=names,
            label=f"{role} column",
        )
        if value is not None:
            mapping[role] = value
    unit = form.field(ui, _field(ColumnMap, "arrival_unit"), "workload.trace.columns.arrival_unit",
                      columns0.get("arrival_unit"))
    if unit is not None:
        mapping["arrival_unit"] = unit
    form.slots.reserve(ui, "workload.trace.columns")
    return {"columns": mapping} if mapping else {}


# --------------------------------------------------------- SLO and simulation
def slo_input(form: Form, ui: Any, initial: dict[str, Any]) -> dict[str, Any]:
    fields = form_fields(SLOConfig)
    values = form.fields(ui, fields, "slo", initial)
    return {k: v for k, v in values.items() if v is not None}


def simulation_input(form: Form, ui: Any, initial: dict[str, Any]) -> dict[str, Any]:
    fields = form_fields(SimulationConfig)
    values = form.fields(ui, fields, "simulation", initial)
    # num_requests: None means "all of a trace", which the default 1000 would hide: keep it explicitly.
    kept = prune_defaults(values, fields)
    if values.get("num_requests") is None:
        kept["num_requests"] = None
    return kept


# ------------------------------------------------------------ configurations
def configuration_inputs(form: Form, ui: Any, loaded: list[Configuration]) -> list[Configuration]:
    """How many configurations, then one tab each."""
    count = ui.number_input(
        "configurations to compare", min_value=1, max_value=MAX_CONFIGURATIONS,
        value=min(max(len(loaded), 1), MAX_CONFIGURATIONS), step=1, key=form.key("configurations.count"),
    )
    tabs = ui.tabs([f"Config {i + 1}" for i in range(int(count))])
    return [
        configuration_input(form, tab, i, loaded[i] if i < len(loaded) else template_configuration(i))
        for i, tab in enumerate(tabs)
    ]


def _device_label(name: str) -> str:
    if name == CUSTOM:
        return "custom (inline definition)"
    if name not in DEVICES:
        return str(name)
    d = DEVICES.get(name)
    return f"{name} ({memory_text(d.memory_gib)}, ${d.price_usd_per_hour:.2f}/h)"


def memory_text(gib: float) -> str:
    """GPU memory for a menu: whole GiB from 10 GiB up (``44.9883`` -> ``45 GiB``), one decimal below."""
    return f"{gib:.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB"


def _device(form: Form, ui: Any, prefix: str, initial: Any) -> Any:
    path = f"{prefix}.deployment.device"
    options = [*DEVICES.names(), CUSTOM]
    first = CUSTOM if isinstance(initial, dict) else _canonical(DEVICES, initial)
    if first not in options:
        options.insert(0, first)
    choice = ui.selectbox("device", options, index=options.index(first), format_func=_device_label,
                          key=form.key(path), help=DeploymentConfig.model_fields["device"].description)
    if choice != CUSTOM:
        form.slots.reserve(ui, path)
        return choice
    text0 = yaml.safe_dump(initial, sort_keys=False) if isinstance(initial, dict) else ""
    text = ui.text_area("device definition (YAML, the fields of a hwmodels/devices.yaml entry)", value=text0,
                        key=form.key(path + ".custom"), height=160)
    form.slots.reserve(ui, path)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        form.issues.append(Issue(path, "give the device definition as a YAML mapping"))
        return initial if isinstance(initial, dict) else {}
    return value


def plugin_summary(registry: Any, name: str) -> str:
    """The first line of a registered plug-in's docstring (empty for an unknown name or no docstring)."""
    doc = (getattr(registry.get(name), "__doc__", "") or "").strip().splitlines() if name in registry else []
    return doc[0].strip() if doc else ""


def _plugin(form: Form, ui: Any, registry: Any, path: str, initial: dict[str, Any], label: str,
            description: str | None) -> dict[str, Any]:
    """A registry name and, when the plug-in registers a ``Params`` model, its parameters."""
    name0 = _canonical(registry, initial.get("name", registry.names()[0]))
    options = registry.names() if name0 in registry.names() else [name0, *registry.names()]

    # The menu shows bare ids: "id: first docstring line" was cut off by the sidebar's width (issue 20), so the
    # chosen plug-in's one-line description goes under the menu, where it wraps.
    name = ui.selectbox(label, options, index=options.index(name0), key=form.key(f"{path}.name"), help=description)
    about = plugin_summary(registry, name)
    if about:
        ui.caption(about)
    form.slots.reserve(ui, f"{path}.name")
    params_model = getattr(registry.get(name), "Params", None) if name in registry else None
    if params_model is None:
        return {"name": name}
    fields = form_fields(params_model)
    same = _canonical(registry, initial.get("name")) == name
    params0 = {k: v for k, v in initial.items() if k != "name"} if same else {}
    values = form.fields(ui, fields, path, params0, key_prefix=f"{path}.{name}")
    # Parameters the loaded file states stay stated even at their default (the plug-in config keeps them as
    # written, so dropping them would change the scenario a round trip must reproduce).
    kept = prune_defaults(values, fields)
    return {"name": name, **{k: v for k, v in values.items() if k in kept or k in params0}}


def _techniques(form: Form, ui: Any, path: str, initial: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The configuration's techniques, in the order chosen, each with its parameters drawn from the ``Params``
    model the technique registers (no per-technique code here: a new technique appears by registering)."""
    given = [t for t in initial if isinstance(t, dict) and t.get("name")]
    names0 = [_canonical(TECHNIQUES, t["name"]) for t in given]
    options = [*TECHNIQUES.names(), *[n for n in names0 if n not in TECHNIQUES.names()]]

    def label_of(n: str) -> str:
        return f"{n}: {TECHNIQUES.get(n).summary.rstrip('.')}" if n in TECHNIQUES else n

    chosen = ui.multiselect("techniques", options, default=names0, format_func=label_of, key=form.key(f"{path}.names"),
                            help=Scenario.model_fields["techniques"].description)
    form.slots.reserve(ui, path)
    out = []
    for i, name in enumerate(chosen):
        params0 = next(({k: v for k, v in t.items() if k != "name"} for t, n in zip(given, names0, strict=True)
                        if n == name), {})
        if name not in TECHNIQUES:
            out.append({"name": name, **params0})
            continue
        fields = form_fields(TECHNIQUES.get(name).Params)
        box = ui.expander(f"{name} parameters", expanded=bool(params0))
        values = form.fields(box, fields, f"{path}.{i}", params0, key_prefix=f"{path}.{name}")
        kept = prune_defaults(values, fields)
        out.append({"name": name, **{k: v for k, v in values.items() if k in kept or k in params0}})
    return out


def configuration_input(form: Form, ui: Any, index: int, init: Configuration) -> Configuration:
    """One configuration: device and size, scheduler and its parameters, router, and everything else."""
    p = f"cfg{index}"
    form.slots.reserve(ui, p)
    name = ui.text_input("name", value=init.name, placeholder="automatic: device, size and scheduler",
                         key=form.key(f"{p}.name"), help="Label of this configuration in tables and charts.")
    dep_fields = {f.name: f for f in form_fields(DeploymentConfig)}
    device = _device(form, ui, p, init.deployment.get("device", dep_fields["device"].default))
    sizes = form.fields(ui, [dep_fields[k] for k in ("num_replicas", "tp", "pp")], f"{p}.deployment", init.deployment)
    form.slots.reserve(ui, f"{p}.deployment")
    scheduler = _plugin(form, ui, SCHEDULERS, f"{p}.scheduler", init.scheduler, "scheduler",
                        SchedulerConfig.model_fields["name"].description)
    router = _plugin(form, ui, ROUTERS, f"{p}.router", init.router or {"name": "round-robin"}, "router",
                     "How requests are spread over replicas.")
    techniques = _techniques(form, ui, f"{p}.techniques", init.extras.get("techniques") or [])
    extras: dict[str, Any] = {}
    more_ui = ui.expander("more deployment options")
    rest = [f for n, f in dep_fields.items() if n not in ("device", "num_replicas", "tp", "pp")]
    choices: dict[str, list[Any]] = {n: list(BYTES_PER_ELEMENT) for n in DTYPE_FIELDS}
    choices["engine"] = engine_names()  # "(not set)": the device's default engine profile, else vllm
    more = form.fields(more_ui, rest, f"{p}.deployment", init.deployment, options=choices)
    # Scenario sections without dedicated inputs (e.g. added to the schema later), drawn from the schema.
    handled = set(SHARED_FIELDS) | set(CONFIG_SECTIONS) | {"techniques"}
    others = [f for f in form_fields(Scenario) if f.name not in handled]
    for f in others:
        value = form.field(more_ui, f, f"{p}.{f.name}", init.extras.get(f.name))
        if value is not None and value != f.default:
            extras[f.name] = value
    named = {f.name for f in others} | {"techniques"}
    if techniques:
        extras["techniques"] = techniques
    extras.update(_overrides(form, more_ui, p, {k: v for k, v in init.extras.items() if k not in named}))
    deployment = {"device": device, **prune_defaults({**sizes, **more}, dep_fields.values())}
    router_out = router if router != {"name": "round-robin"} else {}
    return Configuration(name=name.strip(), deployment=deployment, scheduler=scheduler, router=router_out,
                         extras=extras)


def _overrides(form: Form, ui: Any, prefix: str, initial: dict[str, Any]) -> dict[str, Any]:
    path = f"{prefix}.extras"
    text0 = yaml.safe_dump(initial, sort_keys=False).strip() if initial else ""
    text = ui.text_area(
        "other overrides (YAML, by dotted path)", value=text0, key=form.key(path), height=80,
        help="Any scenario field for this configuration only, e.g. `workload.qps: 8` or `simulation.seed: 3`.",
    )
    form.slots.reserve(ui, path)
    if not text.strip():
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        form.issues.append(Issue(path, f"not valid YAML ({getattr(exc, 'problem', None) or exc})"))
        return dict(initial)
    if not isinstance(value, dict):
        form.issues.append(Issue(path, "write a mapping of dotted paths to values, e.g. `workload.qps: 8`"))
        return dict(initial)
    return value

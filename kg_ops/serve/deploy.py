"""Zero-downtime deploys and rollback of a link-prediction service on the Ray cluster.

``deploy(version_uri, name)``:

1. start the new version as its own Serve application (``NAME--<version id>``, no route)
   and wait until Serve reports it running and it answers ``health`` with its version id;
   a version that fails to load or answer is removed and the live one is left untouched;
2. make sure the gateway application ``NAME`` serves the route prefix;
3. record the new version as live (the old one becomes ``previous``) in the service's
   registry, and wait until the gateway routes to it, and then until ``GET {prefix}/health``
   over HTTP answers with the new version id;
4. wait ``drain_s`` for requests still running on the old version, then remove it.

Requests keep flowing to the old version until step 3, and to the new one after it: no
request fails during the swap. ``rollback(name)`` deploys the recorded previous version the
same way. Each deploy writes a ``serve`` stage manifest (live and previous version, timings,
the HTTP endpoint) to ``out``.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from kg_ops.errors import KGOpsError
from kg_ops.manifest import Stage
from kg_ops.serve.version import ModelVersion, open_version
from kg_ops.store import join

log = logging.getLogger(__name__)

DEFAULT_NAME = "kg"
DEFAULT_ROUTE_PREFIX = "/kg"
HISTORY = 20  # deploys remembered per service


class DeployError(KGOpsError):
    pass


def default_out(version_uri: str, name: str) -> str:
    """The deployment record's default place: ``deploy/NAME`` beside the version's directory
    (``{run}/evaluation`` -> ``{run}/deploy/NAME``)."""
    parent = version_uri.rstrip("/").rsplit("/", 1)[0]
    return join(parent, "deploy", name)


def start_serve(http_host: str, http_port: int) -> dict[str, Any]:
    """Serve's HTTP endpoint on this cluster. An already running Serve keeps its own config
    (the cluster's Serve config decides where it binds); otherwise Serve is started on
    ``http_host:http_port``."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        log.info("starting Ray Serve with its HTTP proxy on %s:%d", http_host, http_port)
        serve.start(http_options={"host": http_host, "port": int(http_port)})
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    cfg = ray.get(controller.get_http_config.remote())
    if (cfg.host, int(cfg.port)) != (http_host, int(http_port)):
        log.info("Ray Serve already runs on this cluster with HTTP on %s:%d; using that",
                 cfg.host, cfg.port)
    return {"host": cfg.host, "port": int(cfg.port)}


def http_url(endpoint: dict[str, Any], route_prefix: str) -> str:
    host = endpoint["host"]
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{endpoint['port']}{route_prefix.rstrip('/')}"


def _get_json(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _wait(what: str, check, timeout_s: float, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DeployError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def _start_version(version: ModelVersion, app: str, *, replicas: int, num_cpus: float,
                   memory_mib: float, timeout_s: float) -> None:
    """Run the version's application and wait for its health answer; on failure remove it."""
    from ray import serve

    from kg_ops.serve.app import model_app

    t0 = time.monotonic()
    try:
        handle = serve._run(model_app(version.to_dict(), replicas=replicas, num_cpus=num_cpus,
                                      memory_mib=memory_mib), name=app, route_prefix=None)
        health = handle.health.remote().result(timeout_s=max(1.0, timeout_s -
                                                             (time.monotonic() - t0)))
    except Exception as exc:
        serve.delete(app)
        raise DeployError(f"model version {version.id} ({version.uri}) did not come up, so "
                          f"the live version is unchanged: {str(exc).strip()[-2000:]}") from exc
    got = health.get("body", {}).get("version")
    if got != version.id:
        serve.delete(app)
        raise DeployError(f"{app} answered health with version {got!r}, expected "
                          f"{version.id!r}; the live version is unchanged")


def _ensure_gateway(name: str, route_prefix: str, state: dict[str, Any]) -> None:
    from ray import serve

    from kg_ops.serve.app import gateway_app

    apps = serve.status().applications
    running = name in apps and str(apps[name].status) in ("RUNNING",
                                                           "ApplicationStatus.RUNNING")
    if running and state.get("route_prefix") == route_prefix:
        return
    if running:
        log.warning("moving service %s from route prefix %s to %s: requests to the old "
                    "prefix stop now", name, state.get("route_prefix"), route_prefix)
    serve._run(gateway_app(name), name=name, route_prefix=route_prefix)


def _switch(name: str, reg, state: dict[str, Any], spec: dict[str, Any],
            timeout_s: float) -> dict[str, Any]:
    """Record ``spec`` as live (the live one becomes previous) and wait for the gateway."""
    import ray
    from ray import serve

    from kg_ops.serve.app import GATEWAY_DEPLOYMENT

    old = state.get("live")
    history = [*state.get("history", []), {k: spec[k] for k in ("app", "deployed_at")}
               | {"version": spec["version"]["id"], "uri": spec["version"]["uri"]}]
    new_state = {"live": spec, "previous": old if old and old["app"] != spec["app"]
                 else state.get("previous"), "history": history[-HISTORY:],
                 "route_prefix": spec["route_prefix"]}
    ray.get(reg.put.remote(new_state))
    gateway = serve.get_deployment_handle(GATEWAY_DEPLOYMENT, name)
    _wait(f"the gateway of {name!r} to route to {spec['app']}",
          lambda: (gateway.serving.remote().result(timeout_s=10) or {}).get("app") == spec["app"],
          timeout_s)
    return new_state


def deploy(version_uri: str, *, name: str = DEFAULT_NAME,
           route_prefix: str = DEFAULT_ROUTE_PREFIX, out: str | None = None,
           http_host: str = "127.0.0.1", http_port: int = 8000, replicas: int = 1,
           num_cpus: float = 1.0, memory_mib: float = 256.0, timeout_s: float = 600.0,
           drain_s: float = 2.0, action: str = "deploy") -> dict[str, Any]:
    """Make the version at ``version_uri`` live as service ``name`` (see the module
    docstring); returns the deployment manifest."""
    import ray
    from ray import serve

    from kg_ops.serve.app import registry, version_app_name

    if not route_prefix.startswith("/"):
        raise DeployError(f"--route-prefix must start with '/', got {route_prefix!r}")
    version = open_version(version_uri)
    out = out or default_out(version.uri, name)
    config = {"name": name, "route_prefix": route_prefix, "replicas": replicas,
              "num_cpus": num_cpus, "memory_mib": memory_mib, "action": action}
    with Stage("serve", out, config=config, inputs={"version": version.uri},
               force=True) as st:
        endpoint = start_serve(http_host, http_port)
        reg = registry(name, create=True)
        state = ray.get(reg.get.remote())
        app = version_app_name(name, version.id)
        live = state.get("live")
        with st.phase("start"):
            if live and live["app"] == app and app in serve.status().applications:
                log.info("version %s is already live as %s; checking it", version.id, app)
            else:
                _start_version(version, app, replicas=replicas, num_cpus=num_cpus,
                               memory_mib=memory_mib, timeout_s=timeout_s)
        spec = {"app": app, "version": version.to_dict(), "route_prefix": route_prefix,
                "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": config}
        with st.phase("switch"):
            _ensure_gateway(name, route_prefix, state)
            new_state = _switch(name, reg, state, spec, timeout_s)
            url = http_url(endpoint, route_prefix)
            _wait(f"{url}/health to answer version {version.id}",
                  lambda: (_get_json(f"{url}/health") or {}).get("version") == version.id,
                  timeout_s)
        with st.phase("retire"):
            if live and live["app"] != app and live["app"] in serve.status().applications:
                time.sleep(drain_s)
                serve.delete(live["app"])
                log.info("retired version %s (%s)", live["version"]["id"], live["app"])
        previous = new_state["previous"] or {}
        st.outputs.update({"url": url, "health": f"{url}/health", "app": app,
                           "gateway_app": name, "service": name, "version": version.id,
                           "version_uri": version.uri,
                           "previous_version": previous.get("version", {}).get("id"),
                           "previous_version_uri": previous.get("version", {}).get("uri")})
        st.extra.update({"live": new_state["live"], "previous": new_state["previous"],
                         "history": new_state["history"], "endpoint": endpoint})
        st.metrics.update(version.metrics)
        st.counts["deploys_recorded"] = len(new_state["history"])
    log.info("service %s: version %s is live at %s (previous: %s)", name, version.id, url,
             (new_state["previous"] or {}).get("version", {}).get("id"))
    return st.manifest


def service_state(name: str) -> dict[str, Any]:
    """The registry record of service ``name`` (live, previous, history)."""
    import ray

    from kg_ops.serve.app import registry

    reg = registry(name)
    if reg is None:
        raise DeployError(f"no service named {name!r} on this Ray cluster; deploy one with "
                          "`kgops serve --model URI`")
    return ray.get(reg.get.remote())


def rollback(*, name: str = DEFAULT_NAME, out: str | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """Make the previous version of service ``name`` live again (a deploy of it)."""
    state = service_state(name)
    previous = state.get("previous")
    if not previous:
        raise DeployError(f"service {name!r} has no previous version to roll back to "
                          f"(live: {(state.get('live') or {}).get('app')})")
    spec_cfg = previous.get("config", {})
    for key in ("replicas", "num_cpus", "memory_mib"):
        kwargs.setdefault(key, spec_cfg.get(key, 1))
    kwargs.setdefault("route_prefix", state.get("route_prefix") or previous["route_prefix"])
    log.info("rolling service %s back to version %s (%s)", name, previous["version"]["id"],
             previous["version"]["uri"])
    return deploy(previous["version"]["uri"], name=name, out=out, action="rollback", **kwargs)

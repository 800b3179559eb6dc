"""Zero-downtime deploys and rollback of a link-prediction service on the Ray cluster.

A service ``NAME`` is one Serve application at the route prefix whose replicas hold the live
model version (:mod:`kg_ops.serve.app`). ``deploy(version_uri, name)``:

* first deploy (no application yet): start it with the version and wait until Serve reports
  it running and ``GET {prefix}/health`` answers the version id; if it does not come up, it
  is removed and the registry is left as it was;
* a new version of a running service: record it as *staged*; every replica loads it beside
  the live one and checks it with a probe query, while answering requests with the live one;
  once every replica reports it ready, record it as live (the old one becomes ``previous``)
  and wait until every replica and ``GET {prefix}/health`` answer with it. A version that any
  replica cannot load is unstaged and :class:`DeployError` says why; the live version never
  changed. Requests running during the switch finish on the version they started with, so no
  request fails; nothing restarts, so nothing waits.

Changing ``--replicas``/``--num-cpus``/``--memory-mib`` or the route prefix of a running
service redeploys its application (Serve's rolling update, which stops a replica before its
successor is up); a version swap never does. ``rollback(name)`` deploys the recorded previous
version the same way. Each deploy writes a ``serve`` stage manifest (live and previous
version, timings, the HTTP endpoint) to ``out``.

Ingress: by default a request reaches a replica through Serve's HTTP proxy (two processes
handle it). On a cluster whose Ray processes run with ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``
each replica answers HTTP on its own port as well, and the deploy reports that URL
(``outputs.ingress`` / ``url`` / ``urls``; the proxy's stays in ``proxy_url``). A version swap
or rollback keeps the replicas, so their URLs stay; a redeploy (new ``--replicas`` etc.)
starts replicas on new ports.
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
from kg_ops.serve.version import open_version
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


def direct_ingress(name: str, endpoint: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the cluster's Serve runs with direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``
    in the environment of its Ray processes), and the URLs of service ``name``'s replicas
    that answer HTTP themselves (their route prefix included; one port per replica, from
    Serve's direct-ingress range). Serve's proxy (``endpoint``) answers in both modes.

    Serve's controller publishes where an application's traffic goes as *target groups*: with
    the proxy, one group for every app (app name empty, the proxy's port); with direct ingress,
    a group per app naming its replicas (the proxy until their ports are allocated)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    groups = [g for g in ray.get(controller.get_target_groups.remote(name))
              if str(g.protocol).rsplit(".", 1)[-1] == "HTTP" and g.app_name == name]
    bound = endpoint["host"]  # replicas bind where Serve's HTTP options say, as the proxy
    urls = [f"http://{t.ip if bound in ('0.0.0.0', '', '::') else bound}:{t.port}"
            f"{g.route_prefix.rstrip('/')}"
            for g in groups for t in g.targets if int(t.port) != int(endpoint["port"])]
    return bool(groups), sorted(urls)


def _answering(urls: list[str], vid: str) -> bool:
    return all((_get_json(f"{u}/health") or {}).get("version") == vid for u in urls)


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


def _service_running(name: str) -> bool:
    from ray import serve

    app = serve.status().applications.get(name)
    return app is not None and str(app.status).rsplit(".", 1)[-1] == "RUNNING"


def _running_replicas(name: str) -> int:
    from ray import serve

    from kg_ops.serve.app import SERVICE_DEPLOYMENT

    app = serve.status().applications.get(name)
    dep = app.deployments.get(SERVICE_DEPLOYMENT) if app is not None else None
    if dep is None:
        return 0
    return sum(n for s, n in dep.replica_states.items() if str(s).rsplit(".", 1)[-1] ==
               "RUNNING")


def _start_service(name: str, route_prefix: str, reg, state: dict[str, Any],
                   spec: dict[str, Any], url: str, timeout_s: float) -> None:
    """(Re)deploy the service's application with ``spec`` live (its config and route prefix)
    and wait for its health answer; on failure remove it and restore the registry."""
    import ray
    from ray import serve

    from kg_ops.serve.app import service_app

    cfg, vid = spec["config"], spec["version"]["id"]
    ray.get(reg.put.remote(_recorded(state, spec)))
    try:
        serve._run(service_app(name, spec["version"], replicas=cfg["replicas"],
                               num_cpus=cfg["num_cpus"], memory_mib=cfg["memory_mib"]),
                   name=name, route_prefix=route_prefix)
        _wait(f"{url}/health to answer version {vid}",
              lambda: (_get_json(f"{url}/health") or {}).get("version") == vid, timeout_s)
    except Exception as exc:
        ray.get(reg.put.remote(state))
        if not state.get("live"):
            serve.delete(name)
        raise DeployError(f"model version {vid} ({spec['version']['uri']}) did not come up, "
                          f"so the live version is unchanged: {str(exc).strip()[-2000:]}"
                          ) from exc


def _replicas_holding(name: str, reg, vid: str, key: str, timeout_s: float) -> None:
    """Wait until every running replica reports ``vid`` as its ``key`` ("staged" or "live");
    a replica that could not load it ends the wait with :class:`DeployError`."""
    import ray

    def holds(r: dict[str, Any]) -> bool:  # a staged version may be live already
        return r["live"] == vid or (key == "staged" and r["staged"] == vid)

    def check():
        reports = ray.get(reg.reports.remote())
        failed = [r["failed"][vid] for r in reports.values() if vid in r.get("failed", {})]
        if failed:
            raise DeployError(f"a replica of service {name!r} could not load version {vid}: "
                              f"{failed[0]}")
        holding = sum(map(holds, reports.values()))
        return holding >= max(1, _running_replicas(name)) and holding == len(reports)

    _wait(f"every replica of {name!r} to hold version {vid} as {key}", check, timeout_s)


def _swap(name: str, reg, state: dict[str, Any], spec: dict[str, Any], timeout_s: float,
          ) -> None:
    """Stage ``spec`` in the running replicas, then make it live (module docstring)."""
    import ray

    vid = spec["version"]["id"]
    ray.get(reg.put.remote({**state, "staged": spec}))
    try:
        _replicas_holding(name, reg, vid, "staged", timeout_s)
    except DeployError as exc:
        ray.get(reg.put.remote({**state, "staged": None}))
        raise DeployError(f"model version {vid} ({spec['version']['uri']}) did not load, so "
                          f"the live version is unchanged: {exc}") from exc
    ray.get(reg.put.remote(_recorded(state, spec)))
    _replicas_holding(name, reg, vid, "live", timeout_s)


def ingress_in_effect(name: str, endpoint: dict[str, Any], proxy_url: str, vid: str,
                      timeout_s: float) -> dict[str, Any]:
    """Which ingress is in effect and the URL to call: with direct ingress, wait until every
    running replica answers on its own port, and call the replica (``url``; ``urls`` lists
    every replica's); else Serve's proxy. ``proxy_url`` is the proxy's in both modes."""
    direct, urls = direct_ingress(name, endpoint)
    if direct:
        def ready():
            _, u = direct_ingress(name, endpoint)
            return u if len(u) >= max(1, _running_replicas(name)) and _answering(u, vid) \
                else None

        urls = _wait(f"every replica of {name!r} to answer version {vid} on its own port "
                     "(direct ingress)", ready, timeout_s)
        return {"ingress": "direct", "url": urls[0], "urls": urls, "proxy_url": proxy_url}
    return {"ingress": "proxy", "url": proxy_url, "urls": [proxy_url], "proxy_url": proxy_url}


def _recorded(state: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The registry record with ``spec`` live (the live one becomes previous)."""
    old = state.get("live")
    history = [*state.get("history", []), {k: spec[k] for k in ("app", "deployed_at")}
               | {"version": spec["version"]["id"], "uri": spec["version"]["uri"]}]
    return {"live": spec, "staged": None,
            "previous": old if old and old["version"]["id"] != spec["version"]["id"]
            else state.get("previous"), "history": history[-HISTORY:],
            "route_prefix": spec["route_prefix"], "config": spec["config"]}


def deploy(version_uri: str, *, name: str = DEFAULT_NAME,
           route_prefix: str = DEFAULT_ROUTE_PREFIX, out: str | None = None,
           http_host: str = "127.0.0.1", http_port: int = 8000, replicas: int = 1,
           num_cpus: float = 1.0, memory_mib: float = 256.0, timeout_s: float = 600.0,
           action: str = "deploy") -> dict[str, Any]:
    """Make the version at ``version_uri`` live as service ``name`` (see the module
    docstring); returns the deployment manifest."""
    import ray

    from kg_ops.serve.app import registry

    if not route_prefix.startswith("/"):
        raise DeployError(f"--route-prefix must start with '/', got {route_prefix!r}")
    version = open_version(version_uri)
    out = out or default_out(version.uri, name)
    config = {"replicas": replicas, "num_cpus": num_cpus, "memory_mib": memory_mib}
    with Stage("serve", out, config={"name": name, "route_prefix": route_prefix, **config,
                                     "action": action},
               inputs={"version": version.uri}, force=True) as st:
        endpoint = start_serve(http_host, http_port)
        url = http_url(endpoint, route_prefix)
        reg = registry(name, create=True)
        state = ray.get(reg.get.remote())
        spec = {"app": name, "version": version.to_dict(), "route_prefix": route_prefix,
                "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": config}
        running = _service_running(name)
        with st.phase("swap"):
            if running:
                _swap(name, reg, state, spec, timeout_s)
        with st.phase("start"):
            if not running or (state.get("config"), state.get("route_prefix")) != (
                    config, route_prefix):
                if running:
                    log.warning("service %s: new config %s at %s (was %s at %s): Serve "
                                "redeploys its replicas", name, config, route_prefix,
                                state.get("config"), state.get("route_prefix"))
                _start_service(name, route_prefix, reg, state, spec, url, timeout_s)
            _wait(f"{url}/health to answer version {version.id}",
                  lambda: _answering([url], version.id), timeout_s)
            ingress = ingress_in_effect(name, endpoint, url, version.id, timeout_s)
        new_state = ray.get(reg.get.remote())
        previous = new_state["previous"] or {}
        url = ingress["url"]
        st.outputs.update({"url": url, "health": f"{url}/health", "app": name,
                           "service": name, "version": version.id,
                           "version_uri": version.uri,
                           "previous_version": previous.get("version", {}).get("id"),
                           "previous_version_uri": previous.get("version", {}).get("uri"),
                           **ingress})
        st.extra.update({"live": new_state["live"], "previous": new_state["previous"],
                         "history": new_state["history"], "endpoint": endpoint})
        st.metrics.update(version.metrics)
        st.counts["deploys_recorded"] = len(new_state["history"])
    log.info("service %s: version %s is live at %s (%s ingress; previous: %s)", name,
             version.id, url, ingress["ingress"], previous.get("version", {}).get("id"))
    return st.manifest


def service_state(name: str) -> dict[str, Any]:
    """The registry record of service ``name`` (live, staged, previous, history) and what each
    replica holds (``replicas``)."""
    import ray

    from kg_ops.serve.app import registry

    reg = registry(name)
    if reg is None:
        raise DeployError(f"no service named {name!r} on this Ray cluster; deploy one with "
                          "`kgops serve --model URI`")
    state = ray.get(reg.get.remote())
    return {**state, "replicas": ray.get(reg.reports.remote()),
            "ingress": ingress_now(name, state.get("route_prefix") or DEFAULT_ROUTE_PREFIX)}


def ingress_now(name: str, route_prefix: str) -> dict[str, Any] | None:
    """Which ingress answers service ``name`` now and where (``ingress``, ``urls``,
    ``proxy_url``), or None when Serve is not running."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    cfg = ray.get(controller.get_http_config.remote())
    endpoint = {"host": cfg.host, "port": int(cfg.port)}
    direct, urls = direct_ingress(name, endpoint)
    proxy_url = http_url(endpoint, route_prefix)
    return {"ingress": "direct" if direct else "proxy", "urls": urls if direct else [proxy_url],
            "proxy_url": proxy_url}


def rollback(*, name: str = DEFAULT_NAME, out: str | None = None,
             **kwargs: Any) -> dict[str, Any]:
    """Make the previous version of service ``name`` live again (a deploy of it)."""
    state = service_state(name)
    previous = state.get("previous")
    if not previous:
        raise DeployError(f"service {name!r} has no previous version to roll back to "
                          f"(live: {(state.get('live') or {}).get('app')})")
    for key, value in previous.get("config", {}).items():
        if key in ("replicas", "num_cpus", "memory_mib"):
            kwargs.setdefault(key, value)
    kwargs.setdefault("route_prefix", state.get("route_prefix") or previous["route_prefix"])
    log.info("rolling service %s back to version %s (%s)", name, previous["version"]["id"],
             previous["version"]["uri"])
    return deploy(previous["version"]["uri"], name=name, out=out, action="rollback", **kwargs)

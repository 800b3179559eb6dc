"""``kgops serve``: deploy a model version as a link-prediction service on the Ray cluster,
roll it back, or show what is live."""

from __future__ import annotations

import argparse
import json
import os

HELP = ("Serve a model version (a `kgops evaluate` output) over HTTP on Ray Serve: top-k "
        "link prediction, triple scores; zero-downtime version swaps and rollback.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kg_ops.serve.deploy import DEFAULT_NAME, DEFAULT_ROUTE_PREFIX

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="URI of the model version to serve: the output directory "
                                      "of `kgops evaluate` (embeddings, metrics, model)")
    what.add_argument("--rollback", action="store_true",
                      help="make the service's previous version live again")
    what.add_argument("--status", action="store_true",
                      help="print the service's live and previous versions")
    p.add_argument("--name", default=DEFAULT_NAME,
                   help=f"service name (default {DEFAULT_NAME}); one service per name")
    p.add_argument("--route-prefix", default=None,
                   help=f"HTTP route prefix (default {DEFAULT_ROUTE_PREFIX}; a rollback keeps "
                        "the service's)")
    p.add_argument("--out", default=None,
                   help="where the deployment manifest goes (default: deploy/NAME beside the "
                        "model version's directory)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    p.add_argument("--num-cpus", type=float, default=1.0,
                   help="CPUs per model replica; torch uses as many threads (default 1)")
    p.add_argument("--memory-mib", type=float, default=256.0,
                   help="largest score matrix per batch before candidates are chunked "
                        "(default 256)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a new version may take to load and answer health")
    p.add_argument("--http-host", default=os.environ.get("KGOPS_SERVE_HTTP_HOST", "127.0.0.1"),
                   help="where Serve's HTTP proxy binds if Serve is not yet running on the "
                        "cluster (a running Serve keeps its own config; default 127.0.0.1)")
    p.add_argument("--http-port", type=int,
                   default=int(os.environ.get("KGOPS_SERVE_HTTP_PORT", "8000")),
                   help="HTTP port in the same case (default 8000)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to serve on (default: RAY_ADDRESS, set inside a Ray job)")


def connect(address: str | None) -> None:
    import ray

    from kg_ops.serve.deploy import DeployError

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise DeployError("kgops serve deploys onto a running Ray cluster: pass --ray-address "
                          "or set RAY_ADDRESS (a Ray job has it set)")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)


def run(args: argparse.Namespace) -> int:
    from kg_ops.serve.deploy import DEFAULT_ROUTE_PREFIX, deploy, rollback, service_state

    connect(args.ray_address)
    if args.status:
        print(json.dumps(service_state(args.name), indent=2, default=str))
        return 0
    common = {"name": args.name, "out": args.out, "replicas": args.replicas,
              "num_cpus": args.num_cpus, "memory_mib": args.memory_mib,
              "timeout_s": args.timeout, "http_host": args.http_host,
              "http_port": args.http_port}
    if args.rollback:
        if args.route_prefix:
            common["route_prefix"] = args.route_prefix
        manifest = rollback(**common)
    else:
        manifest = deploy(args.model, route_prefix=args.route_prefix or DEFAULT_ROUTE_PREFIX,
                          **common)
    live, prev, out = manifest["live"], manifest["previous"], manifest["outputs"]
    url = out["url"]
    print(f"service {args.name}: version {live['version']['id']} is live at {url} "
          f"({live['version']['uri']}); previous: "
          f"{prev['version']['id'] if prev else 'none'}")
    if out["ingress"] == "direct":
        print(f"ingress: direct (RAY_SERVE_ENABLE_DIRECT_INGRESS=1 on the cluster): each "
              f"replica answers on its own port: {' '.join(out['urls'])}; Serve's proxy "
              f"also answers at {out['proxy_url']}")
    else:
        print("ingress: Serve's HTTP proxy (set RAY_SERVE_ENABLE_DIRECT_INGRESS=1 in the "
              "cluster's environment to have the replicas answer HTTP themselves)")
    print(f"try: curl -s {url}/predict -H 'content-type: application/json' "
          "-d '{\"head\": \"<entity key>\", \"relation\": \"<relation>\", \"k\": 10}'")
    return 0

"""Provider info for Airflow's ``apache_airflow_provider`` entry point.

Declares the ``ray`` connection type and its form (conn-fields, ui-field-behaviour) so the UI
shows the right fields without importing the hook. Kept light (the retry policy's module
imports nothing heavy): Airflow loads it in every process that lists providers.
"""

from __future__ import annotations

from kg_ops.airflow.retry import RetryPolicy

RAY_CONN_TYPE = "ray"
HOOK_CLASS = "kg_ops.airflow.hooks.ray.RayHook"


_RETRY = RetryPolicy()   # its defaults, shown in the connection form


# The connection form's extra fields (the hook reads the same keys from the extras).
CONN_FIELDS = {
    "verify_ssl": {
        "label": "Verify TLS",
        "description": "Verify the dashboard's TLS certificate (https only). "
                       "Turn off only for throwaway clusters.",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "ca_bundle": {
        "label": "CA bundle path",
        "description": "PEM file of the CA that signed the dashboard's "
                       "certificate (overrides the system store).",
        "schema": {"type": ["string", "null"]},
    },
    "headers": {
        "label": "Extra HTTP headers (JSON object)",
        "description": "Sent with every request, e.g. for a proxy in front "
                       "of the dashboard. Do not put the token here.",
        "schema": {"type": ["object", "string", "null"]},
    },
    "metadata": {
        "label": "Default job metadata (JSON object)",
        "description": "String key/values added to every submitted job's "
                       "metadata.",
        "schema": {"type": ["object", "string", "null"]},
    },
    "timeout": {
        "label": "HTTP timeout (seconds)",
        "schema": {"type": ["number", "null"], "default": 30},
    },
    "retry_deadline": {
        "label": "Retry deadline (seconds)",
        "description": "How long one call retries transient faults (no answer, "
                       "HTTP 500 'No available agent', 502/503/504); 0 = never.",
        "schema": {"type": ["number", "null"], "default": _RETRY.deadline_s},
    },
    "retry_initial_wait": {
        "label": "First retry wait (seconds)",
        "schema": {"type": ["number", "null"], "default": _RETRY.initial_wait_s},
    },
    "retry_max_wait": {
        "label": "Longest retry wait (seconds)",
        "schema": {"type": ["number", "null"], "default": _RETRY.max_wait_s},
    },
}


def get_provider_info() -> dict:
    return {
        # Must equal the distribution's canonical name, or Airflow refuses the provider.
        "package-name": "kg-ops",
        "name": "kg_ops",
        "description": "Ray jobs from Airflow 3 and knowledge-graph embedding pipelines.",
        "hooks": [{"integration-name": "Ray", "python-modules": ["kg_ops.airflow.hooks.ray"]}],
        "operators": [{"integration-name": "Ray",
                       "python-modules": ["kg_ops.airflow.operators.ray"]}],
        "sensors": [{"integration-name": "Ray", "python-modules": ["kg_ops.airflow.sensors.ray"]}],
        "triggers": [{"integration-name": "Ray",
                      "python-modules": ["kg_ops.airflow.triggers.ray"]}],
        "extra-links": ["kg_ops.airflow.links.RayJobLink"],
        "connection-types": [
            {
                "connection-type": RAY_CONN_TYPE,
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Ray",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Dashboard URL", "password": "Auth token"},
                    "placeholders": {
                        "host": "http://ray-head:8265",
                        "password": "Ray cluster token (RAY_AUTH_TOKEN)",
                    },
                },
            }
        ],
    }

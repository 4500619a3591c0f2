"""The reconciler: a validated routes file and the revisions' readiness in; running instances and what every
gateway should serve out.

Modules: `config` (load, validate and commit a routes file: what the controller receives), `controller`
(orchestrates: applies, starts and retires revisions, follows endpoints, takes rollout and scaling steps),
`rules` (pure: who owns a split, what must run, when a route may move, the gateways' routes), `model` (the
state it keeps), `publisher` (stages xDS resources and publishes them; route tables and host scopes),
`rollouts` (rollout bookkeeping, latest-ready, the stable revision's floor), `census` (the gateways and where
their stats are read), `status` (the views behind `ferry status`, `revisions`, `rollout status`, `service` and
`revision`), `conditions` (pure: Knative's Ready, ConfigurationsReady, RoutesReady... from those views),
`observe` (every gateway's per-revision traffic, summed: the per-revision series on /metrics and
`traffic_snapshot`).
"""

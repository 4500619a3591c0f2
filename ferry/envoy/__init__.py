"""Running a real Envoy as a gateway: `bootstrap` (the static config that points it at ferry's xDS), `process`
(start, wait until it serves, supervise, stop), `admin` (its admin API, where stats are read)."""

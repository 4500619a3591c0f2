"""Running a real Envoy as a gateway: `bootstrap` (the static config that points it at ferry's xDS, and which
stats it keeps), `process` (start, wait until it serves, supervise, stop), `admin` (its admin API, where stats are
read) and `prometheus` (those stats, parsed)."""

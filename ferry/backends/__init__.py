"""Where revisions run: `base` (the Backend protocol the controller drives, and `Durable` for backends whose
workloads outlive ferry), `local` (local processes, probed, restarted and drained), `connections` (which
clients are still connected to an instance, read from /proc), `kubernetes` (Deployments and EndpointSlices)."""

"""ferry: Knative Serving's model (services, immutable revisions, traffic splits and tags, autoscaling to zero,
rollouts) served by a Python xDS control plane to real Envoy gateways, with or without Kubernetes.

The layers, bottom up: `routing` (routes.yaml and the revision history), `xds` (the ADS server and its cache),
`envoy` (running a gateway); `backends`, `autoscaler`, `rollout` and `activator`; `reconcile` (the controller);
`daemon` (`ferry up`'s roles), with `api` and `cli` facing users. Lower layers never import higher ones.
"""
